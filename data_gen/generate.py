"""Stage ``generate``: the teacher writes synthetic documents for every request.

Output is a folder of Parquet shards (``shard-00000.parquet`` ...) plus ``_manifest.json``.
A shard is the resume unit: it is written atomically, and a rerun skips shards that are complete
for the same inputs and config (``_state.json`` holds their fingerprint; a different fingerprint
clears the folder first), so an interrupted run loses at most one shard of work.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq
from pydantic import PositiveInt
from tqdm import tqdm

from dasi.atomic import write_json
from dasi.formats import read_parquet, write_parquet
from dasi.provenance import sha256_file
from dasi.resume import fingerprint, mark_complete, prepare_resumable_dir
from dasi.strict import StrictModel
from data_gen.engines import Engine, SamplingConfig, TeacherConfig, make_engine


class GenerateConfig(StrictModel):
    engine: Literal["transformers", "vllm"]
    teacher: TeacherConfig
    sampling: SamplingConfig = SamplingConfig()
    batch_size: PositiveInt = 8
    shard_size: PositiveInt = 64
    tensor_parallel_size: PositiveInt = 1
    max_requests: PositiveInt | None = None


def output_fingerprint(cfg: GenerateConfig, requests_file: Path) -> str:
    return fingerprint(cfg.model_dump(mode="json"), sha256_file(requests_file))


def shard_complete(path: Path, expected_ids: list[str]) -> bool:
    try:
        ids = pq.read_table(path, columns=["request_id"]).column("request_id").to_pylist()
    except Exception:  # unreadable or missing: regenerate
        return False
    return ids == expected_ids


def records_for(batch: list[dict], completions, engine: Engine, cfg: GenerateConfig,
                teacher_hash: str | None, seed: int) -> list[dict]:
    sampling = json.dumps(cfg.sampling.model_dump(mode="json"), sort_keys=True)
    return [
        {
            "request_id": req["request_id"],
            "lang": req["lang"],
            "style": req["style"],
            "text": c.text,
            "template_id": req["template_id"],
            "template_hash": req["template_hash"],
            "seed_doc_id": req["seed_doc_id"],
            "teacher_id": cfg.teacher.id,
            "teacher_file_hash": teacher_hash,
            "engine": engine.name,
            "engine_version": engine.version,
            "sampling": sampling,
            "seed": seed,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "finish_reason": c.finish_reason,
        }
        for req, c in zip(batch, completions, strict=True)
    ]


def run(cfg: GenerateConfig, requests_file: Path, out_dir: Path, log,
        engine: Engine | None = None) -> dict:
    requests = read_parquet(requests_file, "requests").to_pylist()
    if cfg.max_requests is not None:
        requests = requests[: cfg.max_requests]
    prepare_resumable_dir(out_dir, output_fingerprint(cfg, requests_file), log,
                          finished=lambda d: (d / "_manifest.json").exists())
    shards = [requests[i: i + cfg.shard_size] for i in range(0, len(requests), cfg.shard_size)]
    todo = [k for k, s in enumerate(shards)
            if not shard_complete(out_dir / f"shard-{k:05d}.parquet", [r["request_id"] for r in s])]
    if len(todo) < len(shards):
        log.event("resume", shards_done=len(shards) - len(todo), shards_total=len(shards))
    weights = cfg.teacher.weights_file()
    teacher_hash = sha256_file(weights) if weights else None
    if todo and engine is None:
        engine = make_engine(cfg.engine, cfg.teacher, cfg.tensor_parallel_size)
    bar = tqdm(total=sum(len(shards[k]) for k in todo), desc="generate", unit="req")
    batches_per_shard = -(-cfg.shard_size // cfg.batch_size)
    for k in todo:
        rows = []
        for b in range(0, len(shards[k]), cfg.batch_size):
            batch = shards[k][b: b + cfg.batch_size]
            # The seed depends only on the batch's position, so a resumed run samples the same.
            seed = cfg.sampling.seed + k * batches_per_shard + b // cfg.batch_size
            t0 = time.time()
            completions = engine.generate([r["prompt"] for r in batch], cfg.sampling, seed)
            dt = time.time() - t0
            new_tokens = sum(c.completion_tokens for c in completions)
            rows.extend(records_for(batch, completions, engine, cfg, teacher_hash, seed))
            log.log({"shard": k, "batch_requests": len(batch), "new_tokens": new_tokens,
                     "tokens_per_s": new_tokens / max(dt, 1e-9)}, step=len(rows) + k * cfg.shard_size)
            bar.update(len(batch))
        write_parquet(out_dir / f"shard-{k:05d}.parquet", rows, "generated")
    bar.close()
    summary = write_manifest(out_dir, len(shards))
    mark_complete(out_dir)
    return summary


def write_manifest(out_dir: Path, n_shards: int) -> dict:
    files = [out_dir / f"shard-{k:05d}.parquet" for k in range(n_shards)]
    table = read_parquet(files, "generated")
    finish = table.column("finish_reason").to_pylist()
    manifest = {
        "format": "generated-manifest/1",
        "shards": [{"file": f.name, "rows": pq.read_metadata(f).num_rows, "sha256": sha256_file(f)}
                   for f in files],
        "records": table.num_rows,
        "completion_tokens": sum(table.column("completion_tokens").to_pylist()),
        "finish_reason": {r: finish.count(r) for r in sorted(set(finish))},
    }
    write_json(out_dir / "_manifest.json", manifest)
    return {k: v for k, v in manifest.items() if k not in ("shards", "format")}
