"""Stage ``curate``: filter, deduplicate and split natural + synthetic documents.

Every dropped document is counted under the filter that dropped it, per source, in the stats
JSON; Korean requests the teacher answered in another language show up there as
``synthetic_ko_failed`` instead of disappearing.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Literal

import pyarrow.compute as pc
from pydantic import Field, PositiveInt
from tqdm import tqdm

from dasi.atomic import write_json
from dasi.formats import read_parquet, write_parquet
from dasi.splits import heldout_split
from dasi.strict import StrictModel
from data_gen.filters import duplicate_line_fraction, hangul_ratio, normalized_hash, top_ngram_fraction
from data_gen.generated import verified_shards

Lang = Literal["ko", "en", "code"]


class CurateConfig(StrictModel):
    min_chars: PositiveInt = 50
    max_chars: PositiveInt = 200_000
    min_hangul_ratio: float = Field(0.5, ge=0, le=1, description="for lang ko")
    max_duplicate_line_fraction: float = Field(0.3, ge=0, le=1)
    ngram_size: PositiveInt = 3
    max_top_ngram_fraction: float = Field(0.2, ge=0, le=1)
    repetition_langs: list[Lang] = ["ko", "en"]
    heldout_fraction: float = Field(0.1, ge=0, lt=1)


FILTERS = ("too_short", "too_long", "low_hangul", "repeated_lines", "repeated_ngrams", "duplicate")


def first_failure(doc: dict, cfg: CurateConfig) -> str | None:
    text = doc["text"]
    if len(text) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    if doc["lang"] == "ko" and hangul_ratio(text) < cfg.min_hangul_ratio:
        return "low_hangul"
    if doc["lang"] in cfg.repetition_langs:
        if duplicate_line_fraction(text) > cfg.max_duplicate_line_fraction:
            return "repeated_lines"
        if top_ngram_fraction(text, cfg.ngram_size) > cfg.max_top_ngram_fraction:
            return "repeated_ngrams"
    return None


def natural_docs(seeds_file: Path) -> list[dict]:
    return [
        {"doc_id": d["doc_id"], "source": d["source"], "kind": "natural", "lang": d["lang"],
         "text": d["text"], "provenance": json.dumps({"origin": d["origin"], "license": d["license"]},
                                                     ensure_ascii=False)}
        for d in read_parquet(seeds_file, "documents").to_pylist()
    ]


def synthetic_docs(generated_dir: Path) -> list[dict]:
    """Generated documents (``purpose == pretrain``); the teacher's raw completion is dropped
    from the provenance since ``text`` holds it."""
    docs = []
    for shard in verified_shards(generated_dir):
        table = read_parquet(shard, "generated").filter(pc.field("purpose") == "pretrain")
        docs.extend(synthetic_doc(r) for r in table.to_pylist())
    return docs


def synthetic_doc(r: dict) -> dict:
    text = r.pop("text")
    r.pop("completion")
    return {"doc_id": f"syn-{r['request_id']}", "source": f"synthetic_{r['lang']}", "kind": "synthetic",
            "lang": r["lang"], "text": text, "provenance": json.dumps(r, ensure_ascii=False)}


def assign_splits(docs: list[dict], fraction: float) -> None:
    """Set each document's ``split`` with :func:`dasi.splits.heldout_split`."""
    _, heldout = heldout_split(docs, lambda d: d["lang"], lambda d: d["doc_id"], fraction)
    held_ids = {d["doc_id"] for d in heldout}
    for d in docs:
        d["split"] = "heldout" if d["doc_id"] in held_ids else "train"


def run(cfg: CurateConfig, seeds_file: Path, generated_dir: Path, out_file: Path,
        stats_file: Path, log) -> dict:
    docs = natural_docs(seeds_file) + synthetic_docs(generated_dir)
    removed = defaultdict(lambda: defaultdict(lambda: {"documents": 0, "bytes": 0}))
    kept_by_source = defaultdict(lambda: {"documents": 0, "bytes": 0})
    seen: set[str] = set()
    kept = []
    for doc in tqdm(docs, desc="curate", unit="doc"):
        reason = first_failure(doc, cfg)
        if reason is None:
            h = normalized_hash(doc["text"])
            reason = "duplicate" if h in seen else None
            seen.add(h)
        size = len(doc["text"].encode("utf-8"))
        if reason is not None:
            removed[reason][doc["source"]]["documents"] += 1
            removed[reason][doc["source"]]["bytes"] += size
            continue
        kept_by_source[doc["source"]]["documents"] += 1
        kept_by_source[doc["source"]]["bytes"] += size
        doc["n_chars"] = len(doc["text"])
        kept.append(doc)
    assign_splits(kept, cfg.heldout_fraction)
    write_parquet(out_file, kept, "curated")

    syn_ko = [d for d in docs if d["kind"] == "synthetic" and d["lang"] == "ko"]
    # A Korean request whose answer any filter dropped is a teacher failure: count it.
    ko_failed = sum(removed[f].get("synthetic_ko", {"documents": 0})["documents"] for f in FILTERS)
    stats = {
        "format": "curate-stats/1",
        "input_documents": len(docs),
        "kept_documents": len(kept),
        "kept_bytes": sum(v["bytes"] for v in kept_by_source.values()),
        "kept_by_source": dict(sorted(kept_by_source.items())),
        "removed_by_filter": {f: dict(sorted(removed[f].items())) for f in FILTERS},
        "removed_documents": {f: sum(v["documents"] for v in removed[f].values()) for f in FILTERS},
        "synthetic_ko_requests": len(syn_ko),
        "synthetic_ko_failed": ko_failed,
        "synthetic_ko_failed_fraction": ko_failed / len(syn_ko) if syn_ko else 0.0,
        # Korean requests that became kept Korean documents (Hangul ratio checked above).
        "synthetic_ko_kept": len(syn_ko) - ko_failed,
        "synthetic_ko_kept_fraction": (len(syn_ko) - ko_failed) / len(syn_ko) if syn_ko else 0.0,
        "split_documents": {s: sum(1 for d in kept if d["split"] == s) for s in ("train", "heldout")},
    }
    write_json(stats_file, stats)
    summary = {k: v for k, v in stats.items() if not isinstance(v, dict) and k != "format"}
    log.summary(summary)
    return stats
