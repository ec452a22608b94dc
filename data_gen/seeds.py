"""Stage ``seeds``: collect seed documents and build generation requests from templates."""

from __future__ import annotations

import random
from pathlib import Path

from pydantic import Field, PositiveInt
from tqdm import tqdm

from dasi.config import ConfigError
from dasi.formats import write_parquet
from dasi.strict import StrictModel
from data_gen.sources import SourceConfig, iter_documents
from data_gen.teacher import TeachersConfig
from data_gen.templates import TEMPLATES_DIR, Template, load_instructions, load_slots, load_templates

REQUEST_ROW_GROUP = 1024
DOCUMENT_ROW_GROUP = 1024


class TemplateRoute(StrictModel):
    id: str = Field(description="a template id (data_gen/templates/<id>.yaml)")
    teacher: str = Field(description="a teacher name of the `teacher` section")


class SeedsConfig(StrictModel):
    sources: list[SourceConfig] = Field(min_length=1)
    templates: list[TemplateRoute] = Field(min_length=1, description="which teacher runs each template")
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


def routed_templates(cfg: SeedsConfig, teachers: TeachersConfig) -> list[tuple[Template, str]]:
    """(template, teacher name) pairs, refusing a teacher of the wrong kind."""
    templates = load_templates(Path(cfg.templates_dir), [r.id for r in cfg.templates])
    pairs = []
    for tpl, route in zip(templates, cfg.templates, strict=True):
        spec = teachers.teachers.get(route.teacher)
        if spec is None:
            raise ConfigError(f"seeds.templates: {tpl.id} names teacher {route.teacher!r}: allowed: "
                              f"{', '.join(teachers.teachers)}")
        if spec.kind != tpl.teacher_kind:
            raise ConfigError(f"seeds.templates: {tpl.id} needs a {tpl.teacher_kind} teacher, "
                              f"{route.teacher!r} is {spec.kind}")
        pairs.append((tpl, route.teacher))
    return pairs


def request_row(tpl: Template, teacher: str, index: int, prompt: str, head: str, **fields) -> dict:
    return {
        "request_id": f"{tpl.id}-v{tpl.version}-{index:05d}", "purpose": tpl.purpose,
        "lang": tpl.lang, "style": tpl.style, "teacher": teacher, "teacher_kind": tpl.teacher_kind,
        "template_id": tpl.id, "template_version": tpl.version, "template_hash": tpl.hash,
        "audience": None, "topic": None, "seed_doc_id": None, "instruction": None,
        "prompt": prompt, "head": head, "stop": tpl.stop, "max_new_tokens": tpl.max_new_tokens,
        **fields,
    }


def build_requests(cfg: SeedsConfig, teachers: TeachersConfig, docs: list[dict]) -> list[dict]:
    """Pretrain templates: ``requests_per_template`` requests over seeded random seed documents.
    SFT templates: one request per instruction in the template's language."""
    directory = Path(cfg.templates_dir)
    slots = load_slots(directory)
    instructions, _ = load_instructions(directory)
    rng = random.Random(cfg.seed)
    requests = []
    # Grouped by teacher (one engine each), then template.
    for tpl, teacher in sorted(routed_templates(cfg, teachers), key=lambda p: (p[1], p[0].id)):
        if tpl.purpose == "sft":
            for i, text in enumerate(instructions.prompts.get(tpl.lang, [])):
                prompt, head = tpl.render(instruction=text)
                requests.append(request_row(tpl, teacher, i, prompt, head, instruction=text))
            continue
        pool = [d for d in docs if d["lang"] in tpl.seed_langs]
        if not pool:
            raise ValueError(f"template {tpl.id}: no seed documents in languages {tpl.seed_langs}")
        for i in range(cfg.requests_per_template):
            doc = rng.choice(pool)
            audience = rng.choice(slots.audience[tpl.lang])
            topic = rng.choice(slots.topic[tpl.lang])
            prompt, head = tpl.render(audience=audience, topic=topic, seed=doc["text"][: cfg.excerpt_chars])
            requests.append(request_row(tpl, teacher, i, prompt, head, audience=audience, topic=topic,
                                        seed_doc_id=doc["doc_id"]))
    return requests


def run(cfg: SeedsConfig, teachers: TeachersConfig, out_dir: Path, log) -> dict:
    routed_templates(cfg, teachers)  # refuse a bad routing before collecting anything
    docs = collect_documents(cfg)
    requests = build_requests(cfg, teachers, docs)
    # curate splits its input among tasks by row group
    write_parquet(out_dir / "documents.parquet", docs, "documents", row_group_size=DOCUMENT_ROW_GROUP)
    # Small row groups: a generation task reads only the rows of the shards it runs.
    write_parquet(out_dir / "requests.parquet", requests, "requests", row_group_size=REQUEST_ROW_GROUP)
    summary = {"documents": len(docs), "requests": len(requests)}
    for lang in sorted({d["lang"] for d in docs}):
        sel = [d for d in docs if d["lang"] == lang]
        summary[f"documents_{lang}"] = len(sel)
        summary[f"chars_{lang}"] = sum(d["n_chars"] for d in sel)
    for key in sorted({(r["purpose"], r["lang"], r["teacher"]) for r in requests}):
        summary["requests_" + "_".join(key)] = sum(1 for r in requests
                                                   if (r["purpose"], r["lang"], r["teacher"]) == key)
    log.summary(summary)
    return summary
