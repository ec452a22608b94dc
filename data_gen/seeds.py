"""Stage ``seeds``: collect seed documents and build generation requests from templates."""

from __future__ import annotations

import random
from pathlib import Path

from pydantic import Field, PositiveInt
from tqdm import tqdm

from dasi.formats import write_parquet
from dasi.strict import StrictModel
from data_gen.sources import SourceConfig, iter_documents
from data_gen.templates import TEMPLATES_DIR, load_slots, load_templates


class SeedsConfig(StrictModel):
    sources: list[SourceConfig] = Field(min_length=1)
    templates: list[str] | None = Field(None, description="template ids; null = all")
    templates_dir: str = str(TEMPLATES_DIR.relative_to(TEMPLATES_DIR.parents[1]))
    requests_per_template: PositiveInt
    excerpt_chars: PositiveInt = 600
    seed: int = 1234


def collect_documents(cfg: SeedsConfig) -> list[dict]:
    docs: list[dict] = []
    names = [s.name for s in cfg.sources]
    if len(set(names)) != len(names):
        raise ValueError(f"seeds.sources: duplicate source names {names}")
    for src in tqdm(cfg.sources, desc="seed sources", unit="source"):
        docs.extend(iter_documents(src))
    return docs


def build_requests(cfg: SeedsConfig, docs: list[dict]) -> list[dict]:
    """``requests_per_template`` requests per template, each over a seeded random seed document."""
    directory = Path(cfg.templates_dir)
    templates = load_templates(directory, cfg.templates)
    slots = load_slots(directory)
    rng = random.Random(cfg.seed)
    requests = []
    # Grouped by language so that a generation batch holds prompts of similar length.
    for tpl in sorted(templates, key=lambda t: (t.lang, t.id)):
        pool = [d for d in docs if d["lang"] in tpl.seed_langs]
        if not pool:
            raise ValueError(f"template {tpl.id}: no seed documents in languages {tpl.seed_langs}")
        for i in range(cfg.requests_per_template):
            doc = rng.choice(pool)
            audience = rng.choice(slots.audience[tpl.lang])
            topic = rng.choice(slots.topic[tpl.lang])
            requests.append({
                "request_id": f"{tpl.id}-v{tpl.version}-{i:05d}",
                "lang": tpl.lang,
                "style": tpl.style,
                "template_id": tpl.id,
                "template_version": tpl.version,
                "template_hash": tpl.hash,
                "audience": audience,
                "topic": topic,
                "seed_doc_id": doc["doc_id"],
                "prompt": tpl.render(audience, topic, doc["text"][: cfg.excerpt_chars]),
            })
    return requests


def run(cfg: SeedsConfig, out_dir: Path, log) -> dict:
    docs = collect_documents(cfg)
    requests = build_requests(cfg, docs)
    write_parquet(out_dir / "documents.parquet", docs, "documents")
    write_parquet(out_dir / "requests.parquet", requests, "requests")
    summary = {"documents": len(docs), "requests": len(requests)}
    for lang in sorted({d["lang"] for d in docs}):
        sel = [d for d in docs if d["lang"] == lang]
        summary[f"documents_{lang}"] = len(sel)
        summary[f"chars_{lang}"] = sum(d["n_chars"] for d in sel)
    log.summary(summary)
    return summary
