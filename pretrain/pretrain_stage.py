"""Stage ``pretrain``: train the megatron-core GPT of the ``model:`` section on the packed data.

One rank trains in this process; more ranks run ``pretrain.pretrain_worker`` under torchrun
(one node) or an sbatch script (Slurm, written next to the checkpoints and submitted).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dasi.model_config import ModelConfig
from dasi.provenance import sha256_file
from dasi.resume import fingerprint, mark_complete, prepare_resumable_dir
from pretrain import pretrain_ckpt as ckpt
from pretrain import pretrain_launch as launch
from pretrain.pretrain_config import PretrainConfig
from pretrain.pretrain_worker import replay, write_job

__all__ = ["PretrainConfig", "run"]


def checkpoint_fingerprint(model: ModelConfig, cfg: PretrainConfig, manifest: Path) -> str:
    """What the checkpoints depend on; intervals and the parallel layout are not part of it
    (dist_checkpointing reshards across tensor-parallel sizes)."""
    shaping = cfg.model_dump(mode="json", exclude={"save_interval", "eval_interval", "log_interval",
                                                   "parallel", "slurm"})
    return fingerprint(model.model_dump(mode="json"), shaping, sha256_file(Path(manifest)))


def run(model: ModelConfig, cfg: PretrainConfig, manifest: Path, checkpoints: Path, log: Any | None,
        launcher: str = "local", stop_at: int | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Train (or resume) into ``checkpoints``; returns the summary. ``dry_run`` only prints the
    launch command / sbatch script."""
    from pretrain.pretrain_loop import train

    checkpoints = Path(checkpoints)
    kind = launch.choose(cfg, launcher)
    if not dry_run and not Path(manifest).exists():
        raise FileNotFoundError(f"{manifest}: run the pack stage first")
    if not dry_run:
        # Resume only a run of this model, data and optimisation; anything else starts afresh.
        prepare_resumable_dir(checkpoints, checkpoint_fingerprint(model, cfg, manifest), log,
                              finished=lambda d: (ckpt.latest_step(d) or 0) >= cfg.train_steps)
    if kind == "local" and not dry_run:
        return _finish(train(model, cfg, manifest, checkpoints, log, stop_at=stop_at), cfg, checkpoints)
    job = checkpoints / "job.json"
    if dry_run:
        return {"dry_run": launch.dry_run(cfg, job, launcher)}
    checkpoints.mkdir(parents=True, exist_ok=True)
    write_job(job, model, cfg, manifest, checkpoints, checkpoints / "records.jsonl", stop_at)
    (checkpoints / "records.jsonl").unlink(missing_ok=True)
    log.event("launch", launcher=kind, world_size=cfg.parallel.world_size)
    if kind == "torchrun":
        # torchrun's temp files go to a private folder that is removed afterwards (short path:
        # multiprocessing's AF_UNIX sockets live there).
        with tempfile.TemporaryDirectory(prefix="dasi-torchrun-") as tmp:
            env = {**os.environ, "TMPDIR": tmp}
            subprocess.run(launch.torchrun_command(cfg, job), check=True, env=env)
    else:
        script = checkpoints / "pretrain.sbatch"
        script.write_text(launch.slurm_script(cfg, job, python=sys.executable))
        subprocess.run(["sbatch", "--wait", str(script)], check=True)
    return _finish(replay(checkpoints / "records.jsonl", log), cfg, checkpoints)


def _finish(summary: dict[str, Any], cfg: PretrainConfig, checkpoints: Path) -> dict[str, Any]:
    """A run that reached train_steps is finished: a later invocation trains afresh."""
    if summary.get("steps") == cfg.train_steps:
        mark_complete(checkpoints)
    return summary
