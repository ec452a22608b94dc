"""Shared fixtures: real tiny data from the corpora that ship in packages, and quiet run logs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def runlog(tmp_path):
    """A real RunLog writing into tmp_path, without the W&B/TensorBoard mirrors."""
    from dasi.runlog import LoggingConfig, RunLog

    def make(stage: str = "test", config: dict | None = None, **kw) -> RunLog:
        logging = LoggingConfig(logs_dir=str(tmp_path / "logs"), wandb=False, tensorboard=False)
        return RunLog(stage, config or {}, logging=logging, **kw)

    return make


@pytest.fixture(scope="session")
def natural_docs() -> list[dict]:
    """Seed documents from konlpy (Korean), pydoc topics (English) and stdlib code."""
    from data_gen.sources import KonlpySource, PydocTopicsSource, StdlibSource, iter_documents

    sources = [
        KonlpySource(name="kolaw", type="konlpy", corpus="kolaw", lang="ko", max_chars_per_doc=800),
        PydocTopicsSource(name="pydoc", type="pydoc_topics", lang="en", max_chars_per_doc=800,
                          max_docs=40),
        StdlibSource(name="code", type="python_stdlib", lang="code", include=["textwrap.py", "bisect.py"],
                     max_chars_per_doc=800, max_docs=40),
    ]
    return [d for s in sources for d in iter_documents(s)]


@pytest.fixture(scope="session")
def curated_file(tmp_path_factory, natural_docs) -> Path:
    """A curated Parquet file made from natural documents through the real curate code."""
    from dasi.formats import write_parquet
    from data_gen.curate import assign_splits

    docs = [{"doc_id": d["doc_id"], "source": d["source"], "kind": "natural", "lang": d["lang"],
             "text": d["text"], "n_chars": d["n_chars"], "provenance": "{}"} for d in natural_docs]
    assign_splits(docs, 0.1)
    path = tmp_path_factory.mktemp("curated") / "documents.parquet"
    write_parquet(path, docs, "curated")
    return path
