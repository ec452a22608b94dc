"""Stage ``sft-data``: the teacher's answers to versioned instructions become bilingual chats.

The answers are made by ``generate`` (requests with ``purpose: sft``: same engine, fan-out and
resume as documents). This stage filters them and writes ``chats/1``; every drop is counted per
language and reason in the stats file, so it is visible how many Korean chats survived.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from pydantic import Field, PositiveInt

from dasi.atomic import write_json
from dasi.formats import write_parquet
from dasi.strict import StrictModel
from data_gen.filters import hangul_ratio, top_ngram_fraction
from data_gen.generated import verified_shards
from data_gen.templates import TEMPLATES_DIR, load_instructions


class SftDataConfig(StrictModel):
    templates_dir: str = str(TEMPLATES_DIR.relative_to(TEMPLATES_DIR.parents[1]))
    min_answer_chars: PositiveInt = 20
    min_hangul_ratio: float = Field(0.5, ge=0, le=1, description="for Korean answers")
    max_top_ngram_fraction: float = Field(0.3, ge=0, le=1, description="word 3-gram repetition")
    drop_truncated: bool = Field(False, description="drop answers cut by max_new_tokens")


def answer_problem(row: dict, cfg: SftDataConfig) -> str | None:
    answer = row["completion"].strip()
    if len(answer) < cfg.min_answer_chars:
        return "too_short"
    if row["lang"] == "ko" and hangul_ratio(answer) < cfg.min_hangul_ratio:
        return "low_hangul"
    if top_ngram_fraction(answer, 3) > cfg.max_top_ngram_fraction:
        return "repetitive"
    if cfg.drop_truncated and row["finish_reason"] == "length":
        return "truncated"
    return None


def sft_rows(generated_dir: Path):
    """Generated records with ``purpose == sft``, shard by shard."""
    for path in verified_shards(generated_dir):
        table = pq.read_table(path, filters=[("purpose", "=", "sft")])
        yield from table.to_pylist()


def run(cfg: SftDataConfig, generated_dir: Path, out_file: Path, stats_file: Path, log) -> dict:
    instructions, instructions_hash = load_instructions(Path(cfg.templates_dir))
    rows, seen, dropped = [], Counter(), Counter()
    for r in sft_rows(generated_dir):
        seen[r["lang"]] += 1
        problem = answer_problem(r, cfg)
        if problem:
            dropped[f"{r['lang']}_{problem}"] += 1
            continue
        messages = [{"role": "system", "content": instructions.system[r["lang"]]},
                    {"role": "user", "content": r["instruction"]},
                    {"role": "assistant", "content": r["completion"].strip()}]
        provenance = {k: r[k] for k in ("request_id", "template_id", "template_hash", "teacher", "teacher_id",
                                        "teacher_revision", "teacher_weights_hash", "engine",
                                        "engine_version", "seed", "completion_tokens", "finish_reason")}
        provenance.update(sampling=json.loads(r["sampling"]), instructions_version=instructions.version,
                          instructions_hash=instructions_hash)
        rows.append({"schema": "dasi.chat/1", "id": f"teacher-{r['request_id']}", "lang": r["lang"],
                     "source": f"teacher:{r['teacher_id']}",
                     "messages": json.dumps(messages, ensure_ascii=False),
                     "provenance": json.dumps(provenance, ensure_ascii=False)})
    write_parquet(out_file, rows, "chats")
    kept = Counter(r["lang"] for r in rows)
    stats = {"format": "sft-data-stats/1",
             "answers": dict(sorted(seen.items())), "chats": dict(sorted(kept.items())),
             "kept_fraction": {lang: kept[lang] / n for lang, n in sorted(seen.items())},
             "dropped": dict(sorted(dropped.items()))}
    write_json(stats_file, stats)
    summary = {"answers": sum(seen.values()), "chats": len(rows),
               **{f"chats_{k}": v for k, v in sorted(kept.items())},
               **{f"dropped_{k}": v for k, v in sorted(dropped.items())}}
    log.summary(summary)
    return stats
