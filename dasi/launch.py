"""How a Hugging Face Trainer stage (SFT, the adaptation phases) starts its ranks: in this process
(one rank), ``torchrun`` (one node) or an sbatch script (Slurm, nodes), each rank running
``python -m <worker> --job <job.json>``.

torchrun, not ``accelerate launch``: the Trainer builds accelerate's FSDP plugin from its own
arguments, so torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, the rendezvous) is all it
needs, and ``accelerate launch`` would add a second source of FSDP settings (its config file) that
could disagree with the profile. torchrun ships with torch and is what pretrain's launcher uses.

The Slurm job does not requeue itself: ``sbatch --wait`` returns when the job ends, and DVC decides
whether the stage runs again (a stage that checkpoints resumes then; one that does not starts over).
(pretrain keeps its own launcher, which also drives Megatron's checkpoint-and-requeue cycle.)
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

from dasi.parallel import Parallel, SlurmSpec

Launcher = Literal["local", "torchrun", "slurm"]
# sbatch's --output folder, relative to the submitting directory: Slurm does not create it (a job
# whose output file cannot be opened fails at once), so submit() does.
SLURM_LOGS = Path("logs/slurm")


def choose(parallel: Parallel, launcher: str = "local") -> Launcher:
    """Slurm when asked for or when there are several nodes; one rank runs in-process."""
    if launcher == "slurm" or parallel.nodes > 1:
        return "slurm"
    return "local" if parallel.world_size == 1 else "torchrun"


def worker_args(worker: str, job: Path) -> list[str]:
    return ["-m", worker, "--job", str(job)]


def torchrun_command(parallel: Parallel, worker: str, job: Path, python: str = sys.executable) -> list[str]:
    """One node, ``gpus_per_node`` ranks."""
    return [python, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={parallel.gpus_per_node}", *worker_args(worker, job)]


def slurm_script(parallel: Parallel, slurm: SlurmSpec, worker: str, job: Path, python: str = "python",
                 rerun: str = "") -> str:
    """An ``sbatch`` script: one ``torchrun`` per node via ``srun``, rendezvous on the first node.
    ``rerun`` says, as a comment, what running the stage again does."""
    sbatch = [f"--job-name={slurm.job_name}", f"--partition={slurm.partition}", f"--nodes={parallel.nodes}",
              "--ntasks-per-node=1", f"--gpus-per-node={parallel.gpus_per_node}",
              f"--cpus-per-task={slurm.cpus_per_task}", f"--time={slurm.time}", "--exclusive",
              f"--output={SLURM_LOGS.as_posix()}/%x-%j.out", "--no-requeue"]
    if slurm.account:
        sbatch.append(f"--account={slurm.account}")
    lines = ["#!/bin/bash"] + [f"#SBATCH {o}" for o in sbatch + list(slurm.extra_sbatch)]
    lines.append(f"# dasi creates {SLURM_LOGS.as_posix()}/ before submitting: sbatch does not create it")
    if rerun:
        lines.append(f"# no requeue: {rerun}")
    run = [python, "-m", "torch.distributed.run", f"--nnodes={parallel.nodes}",
           f"--nproc-per-node={parallel.gpus_per_node}", "--rdzv-backend=c10d",
           '--rdzv-endpoint="$MASTER_ADDR:29500"', '--rdzv-id="$SLURM_JOB_ID"', *worker_args(worker, job)]
    lines += [
        "set -euo pipefail",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export MASTER_ADDR",
        "srun --kill-on-bad-exit=1 " + " ".join(a if a.startswith("--rdzv-") else shlex.quote(a)
                                               for a in run),
    ]
    return "\n".join(lines) + "\n"


def dry_run(parallel: Parallel, slurm: SlurmSpec, worker: str, job: Path, launcher: str, section: str,
            rerun: str = "") -> str:
    """What would be run, as text: the command line, or the whole sbatch script."""
    kind = choose(parallel, launcher)
    if kind == "slurm":
        return slurm_script(parallel, slurm, worker, job, rerun=rerun)
    if kind == "torchrun":
        return shlex.join(torchrun_command(parallel, worker, job))
    return f"in-process: one rank ({section}.parallel: 1 node x 1 GPU), no launcher"


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


def run_ranks(kind: Launcher, parallel: Parallel, slurm: SlurmSpec, worker: str, job: Path, script: Path,
              log: Any, rerun: str = "") -> str | None:
    """Run the ranks under torchrun or Slurm and wait; None when they succeeded, else what failed.
    The sbatch script is written to ``script`` (kept with the run's log)."""
    if kind == "torchrun":
        # torchrun's temp files go to a private folder that is removed afterwards (short path:
        # multiprocessing's AF_UNIX sockets live there).
        with tempfile.TemporaryDirectory(prefix="dasi-torchrun-") as tmp:
            done = subprocess.run(torchrun_command(parallel, worker, job), env={**os.environ, "TMPDIR": tmp})
        return f"torchrun exited {done.returncode}" if done.returncode else None
    script.write_text(slurm_script(parallel, slurm, worker, job, python=sys.executable, rerun=rerun))
    job_id, status = submit(script)
    log.event("slurm_job", job_id=job_id, sbatch_exit=status, script=str(script))
    if not status:
        return None
    output = SLURM_LOGS / f"{slurm.job_name}-{job_id}.out"
    return f"slurm job {job_id} ended {job_state(job_id)} (sbatch exit {status}; output {output})"


def run_job(kind: Launcher, parallel: Parallel, slurm: SlurmSpec, worker: str, job: Path, script: Path,
            records: Path, metrics: Path, log: Any, stage: str, rerun: str, advice: str) -> None:
    """Run the ranks of a written ``job`` (``rerun``: the sbatch script's comment) and replay rank
    0's ``records`` into ``log``, a failed or interrupted run's too; raise
    :class:`dasi.stage.JobFailed` when the ranks failed (the message names ``stage`` and ends with
    ``advice``) or did not write ``metrics``."""
    from dasi.rank_records import replay
    from dasi.stage import JobFailed

    records.unlink(missing_ok=True)
    log.event("launch", launcher=kind, nodes=parallel.nodes, gpus_per_node=parallel.gpus_per_node,
              job=str(job))
    metrics.unlink(missing_ok=True)  # what the caller reads back must be this run's
    try:
        failure = run_ranks(kind, parallel, slurm, worker, job, script, log, rerun=rerun)
    finally:
        replay(records, log)
        records.unlink(missing_ok=True)  # now in metrics.jsonl / events.jsonl
    if failure:
        raise JobFailed(f"{stage}: {failure}; the ranks' logs are in the run log ({log.dir}); {advice}")
    if not metrics.is_file():
        raise JobFailed(f"{stage}: the ranks ended without writing {metrics}")
