"""How an SFT run is started: in-process (one rank), ``torchrun`` (one node) or Slurm (nodes).

torchrun, not ``accelerate launch``: transformers' Trainer builds accelerate's FSDP plugin from
its own arguments (``sft.fsdp``, ``sft.fsdp_wrap_layer``), so torchrun's environment (RANK,
WORLD_SIZE, LOCAL_RANK, the rendezvous) is all it needs. ``accelerate launch`` would add a second
source of FSDP settings (its config file) that could disagree with the profile; torchrun ships
with torch and is what pretrain's launcher and Slurm script use, so the two stages launch alike.

SFT saves no checkpoints mid-run: a job that times out or is preempted starts over, so the
Slurm job does not requeue itself. (The launch and Slurm helpers follow pretrain.launch; they are
not imported from there so that a change to the pretrain package does not make DVC re-run SFT.)
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

from instruct.config import SFTConfig

Launcher = Literal["local", "torchrun", "slurm"]
WORKER = "instruct.worker"
# sbatch's --output folder, relative to the submitting directory: Slurm does not create it (a job
# whose output file cannot be opened fails at once), so submit() does.
SLURM_LOGS = Path("logs/slurm")


def choose(cfg: SFTConfig, launcher: str = "local") -> Launcher:
    if launcher == "slurm" or cfg.parallel.nodes > 1:
        return "slurm"
    return "local" if cfg.parallel.world_size == 1 else "torchrun"


def worker_args(job: Path) -> list[str]:
    return ["-m", WORKER, "--job", str(job)]


def torchrun_command(cfg: SFTConfig, job: Path, python: str = sys.executable) -> list[str]:
    """One node, ``gpus_per_node`` ranks."""
    return [python, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={cfg.parallel.gpus_per_node}", *worker_args(job)]


def slurm_script(cfg: SFTConfig, job: Path, python: str = "python") -> str:
    """An ``sbatch`` script: one ``torchrun`` per node via ``srun``, rendezvous on the first node."""
    par, s = cfg.parallel, cfg.slurm
    sbatch = [f"--job-name={s.job_name}", f"--partition={s.partition}", f"--nodes={par.nodes}",
              "--ntasks-per-node=1", f"--gpus-per-node={par.gpus_per_node}",
              f"--cpus-per-task={s.cpus_per_task}", f"--time={s.time}", "--exclusive",
              f"--output={SLURM_LOGS.as_posix()}/%x-%j.out", "--no-requeue"]
    if s.account:
        sbatch.append(f"--account={s.account}")
    lines = ["#!/bin/bash"] + [f"#SBATCH {o}" for o in sbatch + list(s.extra_sbatch)]
    lines.append(f"# dasi creates {SLURM_LOGS.as_posix()}/ before submitting: sbatch does not create it")
    lines.append("# no requeue: SFT keeps no checkpoints, a second run would start over")
    run = [python, "-m", "torch.distributed.run", f"--nnodes={par.nodes}",
           f"--nproc-per-node={par.gpus_per_node}", "--rdzv-backend=c10d",
           '--rdzv-endpoint="$MASTER_ADDR:29500"', '--rdzv-id="$SLURM_JOB_ID"', *worker_args(job)]
    lines += [
        "set -euo pipefail",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export MASTER_ADDR",
        "srun --kill-on-bad-exit=1 " + " ".join(a if a.startswith("--rdzv-") else shlex.quote(a)
                                               for a in run),
    ]
    return "\n".join(lines) + "\n"


def dry_run(cfg: SFTConfig, job: Path, launcher: str = "local") -> str:
    """What would be run, as text: the command line, or the whole sbatch script."""
    kind = choose(cfg, launcher)
    if kind == "slurm":
        return slurm_script(cfg, job)
    if kind == "torchrun":
        return shlex.join(torchrun_command(cfg, job))
    return "in-process: one rank (sft.parallel: 1 node x 1 GPU), no launcher"


def submit(script: Path) -> tuple[str | None, int]:
    """``sbatch --wait`` the script (its output folder created first); returns the job id (None
    when sbatch printed none) and sbatch's exit status: the job's, nonzero on TIMEOUT or failure."""
    SLURM_LOGS.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["sbatch", "--parsable", "--wait", str(script)], stdout=subprocess.PIPE, text=True)
    first = done.stdout.strip().splitlines()[:1]
    return (first[0].split(";")[0] if first else None), done.returncode


def job_state(job_id: str | None) -> str:
    """The job's final state as sacct reports it (TIMEOUT, FAILED, ...), or "unknown" when sacct
    is missing or says nothing."""
    if job_id is None or shutil.which("sacct") is None:
        return "unknown"
    out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"], capture_output=True,
                         text=True)
    first = out.stdout.strip().splitlines()[:1]
    return first[0].strip() if out.returncode == 0 and first else "unknown"
