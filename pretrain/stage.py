"""Stage ``pretrain``: train the megatron-core GPT of the ``model:`` section on the packed data.

One rank trains in this process; more ranks run ``pretrain.worker`` under torchrun
(one node) or an sbatch script (Slurm, written next to the checkpoints and submitted).

Before anything is written, every packed file is checked against the manifest, the checkpoints'
fingerprint (data, model, optimisation, code) against this run's, and the latest checkpoint
against its checksums. Then: no checkpoints -> train; same fingerprint and unfinished -> resume;
finished -> reuse (metrics from the stored summary, nothing retrained); another fingerprint ->
:class:`FingerprintMismatch`, nothing deleted. Only ``restart`` deletes, and says so in the log.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dasi import resume
from dasi.atomic import write_json
from dasi.config import ConfigError
from dasi.model_config import ModelConfig
from dasi.provenance import sha256_file
from dasi.runlog import RunLog
from dasi.stage import JobFailed
from pretrain import checkpoint as ckpt
from pretrain import launch
from pretrain.config import PretrainConfig
from pretrain.pack import PackManifest, verify_manifest
from pretrain.signals import SaveRequest
from pretrain.worker import NODES, replay, replay_nodes, write_job

__all__ = ["PretrainConfig", "run"]

SUMMARY = "summary.json"
# Facts of how the run went, not of what it computed: they differ between an interrupted and an
# uninterrupted run, so they live in history/ and not in summary.json.
HISTORY_KEYS = ("train_wall_s", "segments")
RESTART_HOW = "dasi pretrain --restart or DASI_RESTART=1 dvc repro pretrain"
# Settings that change speed, logging or checks but not a single trained bit.
NOT_SHAPING = {"save_interval", "eval_interval", "log_interval", "parallel", "slurm", "verify_data",
               "verify_checkpoints", "keep_last", "keep_every", "overlap_grad_reduce",
               "overlap_param_gather", "async_save", "recompute", "recompute_num_layers", "peak_tflops",
               # the initial weights are fingerprinted by content (the model part), not by path
               "init_from",
               # the validation set's size: what is trained is the same
               "eval_iters",
               # how a step's samples are grouped into micro-batches: the same samples, the same
               # mean (floating-point summation order aside)
               "micro_batch_size",
               # a run may be extended: the LR schedule follows the new value from the resumed step
               # and the data gets a new block after the samples already planned (pretrain.data)
               "train_steps"}
# pretrain/ modules that training never imports: changing them keeps the checkpoints.
NOT_TRAINING = {"tokenizer.py", "export.py"}
ROOT = Path(__file__).resolve().parents[1]


def code_files() -> list[Path]:
    """The source files whose code trains: pretrain/*.py (but tokenizer and export) and the model
    shape's defaults."""
    here = Path(__file__).resolve().parent
    ours = sorted(p for p in here.glob("*.py") if p.name not in NOT_TRAINING)
    return [*ours, ROOT / "dasi" / "model_config.py"]


def fingerprint_parts(model: ModelConfig, cfg: PretrainConfig, packed: PackManifest) -> dict[str, str]:
    """What the checkpoints depend on, part by part. The data part is the manifest, which holds
    every packed file's sha256 (checked against the files before this is computed)."""
    code = {p.relative_to(ROOT).as_posix(): sha256_file(p) for p in code_files()}
    code.update({pkg: importlib.metadata.version(pkg) for pkg in ("torch", "megatron-core")})
    init = ({"init_from": sha256_file(ckpt.weights_folder(Path(cfg.init_from)) / ckpt.CHECKSUMS)}
            if cfg.init_from else {})
    return {"data": resume.fingerprint(packed.model_dump(mode="json")),
            "model": resume.fingerprint({**model.model_dump(mode="json"), **init}),
            "optimisation": resume.fingerprint(cfg.model_dump(mode="json", exclude=NOT_SHAPING)),
            "code": resume.fingerprint(code)}


def saved_checkpoints(checkpoints: Path) -> list[str]:
    return sorted(p.name for p in Path(checkpoints).glob("iter_*") if p.is_dir() and not p.suffix)


def _held_work(checkpoints: Path) -> str | None:
    names = saved_checkpoints(checkpoints)
    return f"{len(names)} checkpoints ({names[0]} .. {names[-1]})" if names else None


def _drop_stale_temps(checkpoints: Path, log: Any) -> None:
    """Remove the temp files of writes a kill cut off (``.NAME.tmp-PID`` of dasi.atomic,
    ``.latest.tmp``): written only by this stage, never read, and they would make the folder differ
    from an uninterrupted run's."""
    stale = sorted(p for d in (checkpoints, checkpoints / ckpt.HISTORY) for p in d.glob(".*.tmp*")
                   if p.is_file())
    if stale:
        log.event("removed_temp_files", files=[str(p) for p in stale])
    for p in stale:
        p.unlink()


def run(model: ModelConfig, cfg: PretrainConfig, manifest: Path, checkpoints: Path, log: Any | None,
        launcher: str = "local", stop_at: int | None = None, dry_run: bool = False,
        restart: bool = False, allow_code_change: bool = False) -> dict[str, Any]:
    """Train, resume or reuse into ``checkpoints``; returns the whole run's summary. ``dry_run``
    only prints the launch command / sbatch script; ``restart`` deletes the checkpoints first."""
    checkpoints = Path(checkpoints)
    kind = launch.choose(cfg, launcher)
    job = checkpoints / "job.json"
    if dry_run:
        return {"dry_run": launch.dry_run(cfg, job, launcher)}
    if not Path(manifest).exists():
        raise FileNotFoundError(f"{manifest}: run the pack stage first")
    if isinstance(log, RunLog):  # the checkpoint folder, read again at the end, as its checksums are made
        log.hash_outputs(cfg.verify_checkpoints)
    if cfg.init_from:  # the initial weights, checked as a checkpoint is before a resume
        ckpt.verify(ckpt.weights_folder(Path(cfg.init_from)))
    parts = fingerprint_parts(model, cfg, verify_manifest(manifest, cfg.verify_data))
    if restart:
        resume.restart(checkpoints, log, checkpoints=saved_checkpoints(checkpoints))
    changed = resume.changed_parts(checkpoints, parts)
    if allow_code_change and changed == ["code"] and _held_work(checkpoints):
        # the user's explicit choice: a fix to the training code mid-run, the trained state kept
        log.event("resume_across_code_change", before=resume.read_state(checkpoints)["parts"]["code"],
                  after=parts["code"])
    else:
        resume.check_fingerprint(checkpoints, parts, _held_work(checkpoints), RESTART_HOW)
    latest = ckpt.latest_step(checkpoints)
    if latest and latest > cfg.train_steps:
        raise ConfigError(f"pretrain.train_steps {cfg.train_steps} is below the latest checkpoint's step "
                          f"{latest} in {checkpoints}: raise it, or start over ({RESTART_HOW})")
    if latest:
        ckpt.verify(ckpt.iter_dir(checkpoints, latest))
    resume.record_fingerprint(checkpoints, parts)
    _drop_stale_temps(checkpoints, log)
    if latest and latest >= cfg.train_steps and (checkpoints / SUMMARY).is_file():
        return _reuse(checkpoints, latest, log)
    if latest:
        ckpt.check_rng_files(ckpt.iter_dir(checkpoints, latest), cfg.parallel.world_size)
    if kind == "local":
        from pretrain.loop import train

        return _finish(train(model, cfg, manifest, checkpoints, log, stop_at=stop_at), cfg, checkpoints)
    write_job(job, model, cfg, manifest, checkpoints, checkpoints / "records.jsonl", stop_at)
    (checkpoints / "records.jsonl").unlink(missing_ok=True)  # the last launch's, already replayed
    shutil.rmtree(checkpoints / NODES, ignore_errors=True)  # likewise its nodes' environments
    SaveRequest(checkpoints).clear()  # a request left by an earlier launch was served by it
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
        job_id, status = launch.submit(script)
        # a requeued job (saved on USR1, or preempted) is the same job id, its segments one history
        state = launch.final_state(job_id, cfg.slurm.poll_seconds,
                                   lambda now: log.event("slurm_job_state", job_id=job_id, state=now))
        summary = _replay(checkpoints, log)  # a failed job's curves too
        steps, target = summary.get("steps") or 0, min(stop_at or cfg.train_steps, cfg.train_steps)
        done = state == "COMPLETED" or (state == "unknown" and not status)
        if not done or steps < target:  # TIMEOUT, a crash, or saved on USR1 and not requeued
            raise _job_failed(cfg, checkpoints, job_id, status, log, state, steps if done else None)
        return _finish(summary, cfg, checkpoints)
    return _finish(_replay(checkpoints, log), cfg, checkpoints)


def _replay(checkpoints: Path, log: Any) -> dict[str, Any]:
    """The workers' records (all segments, one history) and node environments into ``log``."""
    summary = replay(checkpoints / "records.jsonl", log)
    replay_nodes(checkpoints, log, log.dir / NODES if isinstance(log, RunLog) else None)
    return summary


class SlurmJobFailed(JobFailed):
    """The Slurm job ended other than COMPLETED; its logs were replayed into the run log first."""


def _job_failed(cfg: PretrainConfig, checkpoints: Path, job_id: str | None, status: int,
                log: Any, state: str | None = None, stopped_at: int | None = None) -> SlurmJobFailed:
    """The error of a job that ended other than COMPLETED, or COMPLETED at ``stopped_at`` short
    of its steps (saved on USR1, not requeued); ``state`` None: asked of sacct."""
    state = state or launch.job_state(job_id)
    step = ckpt.latest_step(checkpoints)
    output = launch.SLURM_LOGS / f"{cfg.slurm.job_name}-{job_id}.out"
    log.event("slurm_job_failed", job_id=job_id, state=state, sbatch_exit=status, latest_step=step,
              slurm_output=str(output), **({} if stopped_at is None else {"stopped_at": stopped_at}))
    resumes = (f"resubmitting resumes from {checkpoints / ckpt.LATEST} (step {step})" if step
               else "no checkpoint was saved: resubmitting starts from step 0")
    short = "" if stopped_at is None else (f" at step {stopped_at}, short of its steps: saved on a "
                                           "signal, not requeued (slurm.requeue false or scontrol failed)")
    return SlurmJobFailed(f"slurm job {job_id} ended {state}{short} (sbatch exit {status}; output {output}); "
                          f"its logs are in the run log; {resumes}")


def _reuse(checkpoints: Path, step: int, log: Any) -> dict[str, Any]:
    """A finished run of this fingerprint: its stored summary, nothing retrained."""
    summary = {**json.loads((checkpoints / SUMMARY).read_text()), **ckpt.history(checkpoints, step, log)}
    log.event("reuse_finished", path=str(checkpoints), step=step)
    log.summary(summary)
    return summary


def _finish(summary: dict[str, Any], cfg: PretrainConfig, checkpoints: Path) -> dict[str, Any]:
    """A run that reached train_steps stores its summary: a later invocation reuses it."""
    if summary.get("steps") == cfg.train_steps:
        write_json(checkpoints / SUMMARY, {k: v for k, v in summary.items() if k not in HISTORY_KEYS})
    return summary
