"""Stage ``sft-data``: the teacher answers versioned instructions to make bilingual chats.

Reads the ``generate`` section for the engine and teacher, and its own ``sft_data`` section.
Answers that fail the language check (a Korean prompt answered without Korean) are dropped and
counted in the summary, like curation does for documents.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import Field, PositiveInt

from dasi.formats import write_parquet
from dasi.provenance import sha256_file
from dasi.strict import StrictModel
from data_gen.engines import Engine, SamplingConfig, make_engine
from data_gen.filters import hangul_ratio
from data_gen.generate import GenerateConfig

PROMPTS_FILE = Path(__file__).parent / "instructions" / "sft_prompts.yaml"


class SftDataConfig(StrictModel):
    prompts_file: str = str(PROMPTS_FILE.relative_to(PROMPTS_FILE.parents[2]))
    sampling: SamplingConfig = SamplingConfig()
    batch_size: PositiveInt = 8
    min_answer_chars: PositiveInt = 20
    min_hangul_ratio: float = Field(0.5, ge=0, le=1)


def answer_ok(lang: str, answer: str, cfg: SftDataConfig) -> str | None:
    if len(answer) < cfg.min_answer_chars:
        return "too_short"
    if lang == "ko" and hangul_ratio(answer) < cfg.min_hangul_ratio:
        return "low_hangul"
    return None


def run(cfg: SftDataConfig, gen: GenerateConfig, out_file: Path, log,
        engine: Engine | None = None) -> dict:
    spec = yaml.safe_load(Path(cfg.prompts_file).read_text(encoding="utf-8"))
    prompts_hash = sha256_file(Path(cfg.prompts_file))
    items = [(lang, i, p) for lang in sorted(spec["prompts"]) for i, p in enumerate(spec["prompts"][lang])]
    engine = engine or make_engine(gen.engine, gen.teacher, gen.tensor_parallel_size)
    weights = gen.teacher.weights_file()
    teacher_hash = sha256_file(weights) if weights else None
    rows, dropped = [], {}
    for b in range(0, len(items), cfg.batch_size):
        batch = items[b: b + cfg.batch_size]
        seed = cfg.sampling.seed + b // cfg.batch_size
        outs = engine.generate([p for _, _, p in batch], cfg.sampling, seed)
        for (lang, i, prompt), c in zip(batch, outs, strict=True):
            reason = answer_ok(lang, c.text, cfg)
            if reason:
                dropped[f"{lang}_{reason}"] = dropped.get(f"{lang}_{reason}", 0) + 1
                continue
            messages = [{"role": "system", "content": spec["system"][lang]},
                        {"role": "user", "content": prompt}, {"role": "assistant", "content": c.text}]
            rows.append({
                "schema": "dasi.chat/1", "id": f"teacher-{lang}-{i:04d}", "lang": lang,
                "source": f"teacher:{gen.teacher.id}",
                "messages": json.dumps(messages, ensure_ascii=False),
                "provenance": json.dumps({
                    "teacher_id": gen.teacher.id, "teacher_file_hash": teacher_hash,
                    "engine": engine.name, "engine_version": engine.version,
                    "prompts_file_hash": prompts_hash, "prompts_version": spec["version"],
                    "sampling": cfg.sampling.model_dump(mode="json"), "seed": seed,
                    "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason,
                }, ensure_ascii=False),
            })
        log.log({"answered": min(b + cfg.batch_size, len(items)), "kept": len(rows)}, step=b)
    write_parquet(out_file, rows, "chats")
    summary = {"prompts": len(items), "chats": len(rows),
               **{f"dropped_{k}": v for k, v in sorted(dropped.items())}}
    log.summary(summary)
    return summary
