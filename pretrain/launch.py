"""How a pretrain run is started: in-process (one rank), ``torchrun`` (one node) or Slurm."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from dasi.launch import SLURM_LOGS, Launcher, job_state, submit
from pretrain.config import PretrainConfig
from pretrain.signals import flag_file

# sbatch --wait and sacct's final state as every launched stage reads them (dasi.launch); the
# requeue cycle and the queue polling below are pretrain's own.
__all__ = ["ACTIVE", "SLURM_LOGS", "WORKER", "Launcher", "choose", "dry_run", "final_state", "job_state",
           "queue_state", "slurm_script", "submit", "torchrun_command", "worker_args"]

WORKER = "pretrain.worker"


def choose(cfg: PretrainConfig, launcher: str = "local") -> Launcher:
    if launcher == "slurm" or cfg.parallel.nodes > 1:
        return "slurm"
    return "local" if cfg.parallel.world_size == 1 else "torchrun"


def worker_args(job: Path) -> list[str]:
    return ["-m", WORKER, "--job", str(job)]


def torchrun_command(cfg: PretrainConfig, job: Path, python: str = sys.executable) -> list[str]:
    """One node, ``world_size`` ranks."""
    return [python, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={cfg.parallel.world_size}", *worker_args(job)]


def slurm_script(cfg: PretrainConfig, job: Path, python: str = "python") -> str:
    """An ``sbatch`` script: one ``torchrun`` per node via ``srun``, rendezvous on the first node.

    USR1 (``slurm.signal_seconds`` before the time limit) makes the batch shell write the save
    request (pretrain.signals); the ranks save at the end of their step and exit 0, and the shell
    then requeues the job (same job id, ``SLURM_RESTART_COUNT`` + 1), whose next segment resumes
    from that checkpoint."""
    par, s = cfg.parallel, cfg.slurm
    sbatch = [f"--job-name={s.job_name}", f"--partition={s.partition}", f"--nodes={par.nodes}",
              "--ntasks-per-node=1", f"--gpus-per-node={par.procs_per_node}",
              f"--cpus-per-task={s.cpus_per_task}", f"--time={s.time}", "--exclusive",
              f"--output={SLURM_LOGS.as_posix()}/%x-%j.out", "--open-mode=append",
              "--requeue" if s.requeue else "--no-requeue", f"--signal=B:USR1@{s.signal_seconds}"]
    if s.account:
        sbatch.append(f"--account={s.account}")
    lines = ["#!/bin/bash"] + [f"#SBATCH {o}" for o in sbatch + list(s.extra_sbatch)]
    lines.append(f"# dasi creates {SLURM_LOGS.as_posix()}/ before submitting: sbatch does not create it")
    run = [python, "-m", "torch.distributed.run", f"--nnodes={par.nodes}",
           f"--nproc-per-node={par.procs_per_node}", "--rdzv-backend=c10d",
           '--rdzv-endpoint="$MASTER_ADDR:29500"', '--rdzv-id="$SLURM_JOB_ID"', *worker_args(job)]
    lines += [
        "set -euo pipefail",
        f"SAVE_REQUEST={shlex.quote(flag_file(Path(job).parent).as_posix())}",
        "# a requeued job starts here again: the last segment's request was served",
        'rm -f "$SAVE_REQUEST"',
        "# USR1 reaches only this shell (B:): the ranks see the flag after their current step",
        """trap 'echo "dasi: USR1, save requested" >&2; touch "$SAVE_REQUEST"' USR1""",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export MASTER_ADDR CUDA_DEVICE_MAX_CONNECTIONS=1",
        "srun --kill-on-bad-exit=1 " + " ".join(a if a.startswith("--rdzv-") else shlex.quote(a)
                                               for a in run) + " &",
        "SRUN=$!",
        "# bash's wait returns early when a trapped signal arrives: wait again until srun has ended",
        "while :; do",
        '  wait "$SRUN" || true',
        '  kill -0 "$SRUN" 2>/dev/null || break',
        "done",
        'wait "$SRUN" && status=0 || status=$?  # srun\'s exit status, which bash keeps',
    ]
    if s.requeue:
        lines += ["# saved on request and exited cleanly: run the next segment under the same job id",
                  'if [ "$status" -eq 0 ] && [ -e "$SAVE_REQUEST" ]; then',
                  '  scontrol requeue "$SLURM_JOB_ID"',
                  "fi"]
    lines.append('exit "$status"')
    return "\n".join(lines) + "\n"


def dry_run(cfg: PretrainConfig, job: Path, launcher: str = "local") -> str:
    """What would be run, as text: the command line, or the whole sbatch script."""
    kind = choose(cfg, launcher)
    if kind == "slurm":
        return slurm_script(cfg, job)
    if kind == "torchrun":
        return shlex.join(torchrun_command(cfg, job))
    return f"in-process: {shlex.join([sys.executable, *worker_args(job)])}"


# States of a job Slurm still holds, to come back or to end: a requeued job is the same job id,
# held (REQUEUE_HOLD, SPECIAL_EXIT) until someone releases or cancels it.
ACTIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING",
                    "SIGNALING", "STAGE_OUT", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "SPECIAL_EXIT",
                    "RESV_DEL_HOLD"})


def queue_state(job_id: str | None) -> str | None:
    """The job's state in the controller now (squeue), None once it no longer holds the job. It is
    asked first: sacct may still name the last segment's end (REQUEUED, PREEMPTED) while the
    requeued job already waits."""
    if job_id is None or shutil.which("squeue") is None:
        return None
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    first = out.stdout.strip().splitlines()[:1]
    return first[0].strip() if out.returncode == 0 and first else None


def final_state(job_id: str | None, poll_s: float, on_change: Callable[[str], None],
                sleep: Callable[[float], None] = time.sleep) -> str:
    """Wait while the job is pending, running or requeued (``sbatch --wait`` may return when a
    segment ends); returns the state it ended in. ``on_change`` hears each new state."""
    last = None
    while True:
        state = queue_state(job_id) or job_state(job_id)
        if state != last:
            on_change(state)
            last = state
        if state.split()[0] not in ACTIVE:
            return state
        sleep(poll_s)
