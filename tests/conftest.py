"""Shared fixtures: real tiny data from the corpora that ship in packages, and quiet run logs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from dasi.determinism import pin_cpu_kernels

pin_cpu_kernels()  # as `dasi` does, before any test imports torch

# Tests never touch the user's caches: Hugging Face and matplotlib write into a private folder.
_CACHE = Path(tempfile.mkdtemp(prefix="dasi-tests-cache-"))
os.environ["HF_HOME"] = str(_CACHE / "hf")
os.environ["MPLCONFIGDIR"] = str(_CACHE / "matplotlib")
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


def write_curated_dir(root: Path, docs: list[dict], shards: int = 2) -> Path:
    """A curated folder (``documents/NNNNN.parquet`` + manifest, as curate writes it) holding
    ``docs``; each (split, source) group is dealt round-robin over ``shards`` shards, so every
    shard holds every dataset of two or more documents."""
    from collections import defaultdict

    from dasi.formats import write_parquet
    from data_gen.curated import write_manifest

    parts: list[list[dict]] = [[] for _ in range(shards)]
    seen: dict[tuple[str, str], int] = defaultdict(int)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for d in docs:
        group = (d["split"], d["source"])
        parts[seen[group] % shards].append(d)
        seen[group] += 1
        counts[d["split"]][d["lang"]] += 1
    (root / "documents").mkdir(parents=True)
    paths = [root / "documents" / f"{i:05d}.parquet" for i in range(shards)]
    for path, part in zip(paths, parts, strict=True):
        write_parquet(path, part, "curated")
    write_manifest(root, paths, {s: dict(v) for s, v in counts.items()})
    return root


def curated_rows(docs: list[dict], heldout_fraction: float = 0.1) -> list[dict]:
    """Curated records (schema ``curated``) of natural documents, held out per language by id hash."""
    from dasi.splits import heldout_split

    rows = [{"doc_id": d["doc_id"], "source": d["source"], "kind": "natural", "lang": d["lang"],
             "text": d["text"], "n_chars": d["n_chars"], "provenance": "{}"} for d in docs]
    train, heldout = heldout_split(rows, lambda r: r["lang"], lambda r: r["doc_id"], heldout_fraction)
    return [{**r, "split": "train"} for r in train] + [{**r, "split": "heldout"} for r in heldout]


@pytest.fixture(scope="session")
def curated_dir(tmp_path_factory, natural_docs) -> Path:
    """A curated folder of two shards made from the natural documents."""
    return write_curated_dir(tmp_path_factory.mktemp("curated_dir") / "curated", curated_rows(natural_docs))


def _quiet_log(root: Path, stage: str):
    from dasi.runlog import LoggingConfig, RunLog

    return RunLog(stage, {}, logging=LoggingConfig(logs_dir=str(root / "logs"), wandb=False,
                                                   tensorboard=False))


# The token budget pack checks epochs against (the tests' pretrain runs draw about this much).
PACK_BUDGET = 10_000


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, curated_dir) -> Path:
    """Our tokenizer (tokenizer stage code) trained on the real natural documents."""
    from pretrain.tokenizer import TokenizerConfig, run

    root = tmp_path_factory.mktemp("tokenizer")
    cfg = TokenizerConfig(vocab_size=2048, sample_chars={"ko": 30000, "en": 30000, "code": 30000},
                          references=[])
    with _quiet_log(root, "tokenizer") as log:
        run(cfg, curated_dir, root / "tokenizer", root / "eff.json", log)
    return root / "tokenizer"


@pytest.fixture(scope="session")
def packed(tmp_path_factory, curated_dir, tokenizer_dir) -> Path:
    """megatron .bin/.idx data and its manifest (pack stage code); returns the manifest path."""
    from pretrain.pack import PackConfig, run

    root = tmp_path_factory.mktemp("packed")
    with _quiet_log(root, "pack") as log:
        run(PackConfig(blend={"ko": 0.35, "en": 0.28, "code": 0.37}), PACK_BUDGET, curated_dir,
            tokenizer_dir, root / "packed", root / "mix.json", log)
    return root / "packed" / "manifest.json"


def build_tiny_llama(folder: Path, tokenizer: Path, seed: int = 0) -> Path:
    """A random LlamaForCausalLM of the tiny profile's shape, saved with ``tokenizer``."""
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=2048, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=192, max_position_embeddings=128,
                      rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    for f in Path(tokenizer).iterdir():
        shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tokenizer_dir) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "base", tokenizer_dir)


@pytest.fixture(scope="session")
def teachers_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct built once per session by the teacher stage's own code (~30 s), for
    the generation tests and the adaptation path (its English base)."""
    from data_gen.teacher import build_teacher
    from tests.data_gen.conftest import SMOLLM2, EventLog

    root = tmp_path_factory.mktemp("teachers")
    build_teacher("smollm2", SMOLLM2, root / "smollm2", EventLog())
    return root
