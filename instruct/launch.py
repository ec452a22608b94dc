"""How an SFT run is started: in-process (one rank), ``torchrun`` (one node) or Slurm (nodes), as
:mod:`dasi.launch` starts every Trainer stage; each rank runs :mod:`instruct.worker`.

SFT saves no checkpoints mid-run: a job that times out or is preempted starts over."""

from __future__ import annotations

import sys
from pathlib import Path

from dasi import launch
from dasi.launch import SLURM_LOGS, Launcher, job_state, submit
from instruct.config import SFTConfig

__all__ = ["SLURM_LOGS", "WORKER", "choose", "dry_run", "job_state", "slurm_script", "submit",
           "torchrun_command"]

WORKER = "instruct.worker"
RERUN = "SFT keeps no checkpoints, a second run would start over"


def choose(cfg: SFTConfig, launcher: str = "local") -> Launcher:
    return launch.choose(cfg.parallel, launcher)


def torchrun_command(cfg: SFTConfig, job: Path, python: str = sys.executable) -> list[str]:
    return launch.torchrun_command(cfg.parallel, WORKER, job, python)


def slurm_script(cfg: SFTConfig, job: Path, python: str = "python") -> str:
    return launch.slurm_script(cfg.parallel, cfg.slurm, WORKER, job, python, rerun=RERUN)


def dry_run(cfg: SFTConfig, job: Path, launcher: str = "local") -> str:
    """What would be run, as text: the command line, or the whole sbatch script."""
    return launch.dry_run(cfg.parallel, cfg.slurm, WORKER, job, launcher, "sft", rerun=RERUN)
