"""Stage ``sft``: instruction-tune the base model, in this process or over several ranks.

One rank (``sft.parallel`` 1 node x 1 GPU: the tiny profile) trains here. More ranks run
``instruct.worker`` under torchrun (one node) or an sbatch script (Slurm, submitted with
``--wait``); the job file, and the sbatch script, are kept in the run log's ``launch/`` folder,
and rank 0's records are replayed into the run log when the ranks are done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dasi.launch import run_job
from instruct import launch
from instruct.chats import SEED_FILE
from instruct.config import SFTConfig
from instruct.worker import write_job

__all__ = ["SEED_FILE", "SFTConfig", "dry_run", "run"]

LAUNCH = "launch"  # the run log's folder for the job file and the sbatch script


def dry_run(cfg: SFTConfig, logs_dir: Path, launcher: str = "local") -> str:
    """What ``run`` would launch. The job file lives in the run's log folder, named when the run
    starts: shown here with ``<run-id>``."""
    return launch.dry_run(cfg, Path(logs_dir) / "sft" / "<run-id>" / LAUNCH / "job.json", launcher)


def run(cfg: SFTConfig, base: Path, tokenizer_dir: Path | None, extra_chats: list[Path], out: Path,
        metrics_path: Path, log: Any, launcher: str = "local") -> dict[str, Any]:
    """Train and write ``out`` and ``metrics_path``; returns the metrics."""
    kind = launch.choose(cfg, launcher)
    if kind == "local":
        from instruct.sft import train  # torch and transformers: not needed to launch ranks

        return train(cfg, base, tokenizer_dir, extra_chats, out, metrics_path, log)
    folder = Path(log.dir) / LAUNCH
    records = folder / "records.jsonl"
    job = write_job(folder / "job.json", cfg, base, tokenizer_dir, extra_chats, out, metrics_path, records)
    run_job(kind, cfg.parallel, cfg.slurm, launch.WORKER, job, folder / "sft.sbatch", records,
            Path(metrics_path), log, "sft", launch.RERUN,
            "SFT keeps no checkpoints: running it again trains from the start")
    return json.loads(Path(metrics_path).read_text())
