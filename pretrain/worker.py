"""What each rank runs under torchrun / srun: ``python -m pretrain.worker --job job.json``.

Rank 0 writes metrics, events and the summary as JSON lines into the job's ``records`` file; the
stage replays them into its RunLog when the job is done. A Slurm job that requeues itself runs in
segments (``SLURM_RESTART_COUNT``: 0, 1, ..) that all append to that file, each starting with a
``segment_start`` event; :func:`stitch` makes one history of them. Local rank 0 of each node
records the node's environment in ``<checkpoints>/nodes/<segment>/<hostname>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from dasi.atomic import write_json
from dasi.model_config import ModelConfig
from dasi.provenance import environment, environment_events
from pretrain.config import PretrainConfig

NODES = "nodes"


class RecordLog:
    """The RunLog writing interface, as JSON lines (only rank 0 writes)."""

    def __init__(self, path: Path, rank: int = 0) -> None:
        self.path, self.rank = Path(path), rank

    def _write(self, kind: str, **data: Any) -> None:
        if self.rank == 0:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"kind": kind, **data}, default=float) + "\n")

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._write("log", metrics=metrics, step=step)

    def event(self, name: str, **data: Any) -> None:
        self._write("event", name=name, data=data)

    def summary(self, metrics: dict[str, Any]) -> None:
        self._write("summary", metrics=metrics)

    def begin_segment(self, **data: Any) -> None:
        """The ``segment_start`` event, on a line of its own: a segment killed while writing may
        have left its last line without the newline."""
        if self.rank == 0 and self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
        self.event("segment_start", **data)


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records of ``path`` and how many lines could not be read (cut off by a kill)."""
    records, bad = [], 0
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    return records, bad


def _redone(record: dict[str, Any], start: int) -> bool:
    return record["kind"] == "log" and record["step"] is not None and record["step"] > start


def stitch(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One history of the segments' records. A segment that resumed at step S re-did the steps
    after S that an earlier one logged after its last save: the later records replace those (the
    checkpoints continue the later run), and a ``steps_redone`` event says which were replaced.
    Events stay (they happened); only the last summary is kept (each segment writes the whole
    run's)."""
    out: list[dict[str, Any]] = []
    for r in records:
        out.append(r)
        if r["kind"] != "event" or r["name"] != "segment_start":
            continue
        start = r["data"].get("start_step") or 0
        gone = [x["step"] for x in out if _redone(x, start)]
        if gone:
            out = [x for x in out if not _redone(x, start)]
            out.append({"kind": "event", "name": "steps_redone",
                        "data": {"segment": r["data"].get("segment"), "resumed_at": start,
                                 "first": min(gone), "last": max(gone), "records_replaced": len(gone)}})
    last = max((i for i, r in enumerate(out) if r["kind"] == "summary"), default=None)
    return [r for i, r in enumerate(out) if r["kind"] != "summary" or i == last]


def replay(records: Path, log: Any) -> dict[str, Any]:
    """Pass the recorded lines of every segment, stitched, on to ``log``; returns the summary."""
    summary: dict[str, Any] = {}
    if not Path(records).exists():
        return summary
    lines, bad = read_records(records)
    if bad:
        log.event("records_unreadable", file=str(records), lines=bad)
    for r in stitch(lines):
        if r["kind"] == "log":
            log.log(r["metrics"], step=r["step"])
        elif r["kind"] == "event":
            log.event(r["name"], **r["data"])
        else:
            summary = r["metrics"]
            log.summary(summary)
    return summary


# -- each node's environment ---------------------------------------------------------------------

def segment_number() -> int:
    """Which launch of the job this is: Slurm counts requeues in SLURM_RESTART_COUNT (unset: 0)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def segment_record(checkpoints: Path, segment: int) -> dict[str, Any]:
    """What the ``segment_start`` event says: which launch, where, from which step."""
    from pretrain.checkpoint import latest_step

    return {"segment": segment, "job_id": os.environ.get("SLURM_JOB_ID"),
            "restart_count": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
            "nodes": os.environ.get("SLURM_JOB_NODELIST") or socket.gethostname(),
            "start_step": latest_step(checkpoints) or 0}


def _nvidia_driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None
    first = out.stdout.strip().splitlines()[:1]
    return first[0].strip() if out.returncode == 0 and first else None


def _gpus() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"gpus": [], "nccl": None, "driver": _nvidia_driver()}
    props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    try:
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
    except (AttributeError, RuntimeError):
        nccl = None
    return {"gpus": [{"name": p.name, "memory_bytes": p.total_memory} for p in props], "nccl": nccl,
            "driver": _nvidia_driver()}


def node_environment() -> dict[str, Any]:
    """dasi.provenance's environment (host, CPU, CUDA, packages, the check against the lock, git)
    with each GPU's memory, the NVIDIA driver and NCCL, and the node's Slurm variables."""
    slurm = ("SLURM_JOB_ID", "SLURM_NODEID", "SLURM_RESTART_COUNT", "SLURM_JOB_NODELIST")
    return {**environment(), **_gpus(), "slurm": {k: os.environ.get(k) for k in slurm}}


def node_file(checkpoints: Path, segment: int, host: str) -> Path:
    return Path(checkpoints) / NODES / str(segment) / f"{host}.json"


def write_node_env(checkpoints: Path, segment: int) -> Path:
    env = node_environment()
    path = node_file(checkpoints, segment, env["hostname"])
    write_json(path, env)
    return path


def _node_event(env: dict[str, Any]) -> dict[str, Any]:
    lock = env["lock"]
    return {"gpus": [g["name"] for g in env["gpus"]], "driver": env["driver"],
            "cuda": env["accelerator"].get("cuda_version"), "nccl": env["nccl"],
            "torch": env["packages"].get("torch"), "megatron_core": env["packages"].get("megatron-core"),
            "lock": lock["path"], "differs_from_lock": [d["name"] for d in lock.get("differs", [])],
            "warnings": [name for name, _ in environment_events(env)]}


def replay_nodes(checkpoints: Path, log: Any, into: Path | None) -> list[Path]:
    """One ``node_env`` event per node and segment, the files copied into ``into`` (the run log's
    folder, as ``<segment>/<hostname>.json``); returns the copies."""
    root, copies = Path(checkpoints) / NODES, []
    for f in sorted(root.glob("*/*.json"), key=lambda p: (int(p.parent.name), p.name)):
        env = json.loads(f.read_text())
        where = f
        if into is not None:
            where = Path(into) / f.parent.name / f.name
            where.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, where)
            copies.append(where)
        log.event("node_env", segment=int(f.parent.name), hostname=env["hostname"], file=str(where),
                  **_node_event(env))
    return copies


def write_job(path: Path, model: ModelConfig, cfg: PretrainConfig, manifest: Path, checkpoints: Path,
              records: Path, stop_at: int | None = None) -> Path:
    job = {"model": model.model_dump(mode="json"), "pretrain": cfg.model_dump(mode="json"),
           "manifest": str(Path(manifest).resolve()), "checkpoints": str(Path(checkpoints).resolve()),
           "records": str(Path(records).resolve()), "stop_at": stop_at}
    Path(path).write_text(json.dumps(job, indent=2))
    return Path(path)


def main(argv: list[str] | None = None) -> None:
    from pretrain.loop import train
    from pretrain.signals import SaveRequest

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--job", type=Path, required=True)
    job = json.loads(ap.parse_args(argv).job.read_text())
    checkpoints, segment = Path(job["checkpoints"]), segment_number()
    log = RecordLog(Path(job["records"]), rank=int(os.environ.get("RANK", "0")))
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        write_node_env(checkpoints, segment)
    log.begin_segment(**segment_record(checkpoints, segment))
    cfg, request = PretrainConfig.model_validate(job["pretrain"]), SaveRequest(checkpoints)
    summary = train(ModelConfig.model_validate(job["model"]), cfg, Path(job["manifest"]), checkpoints, log,
                    stop_at=job["stop_at"], save_requested=request.requested)
    if summary["steps"] >= min(job["stop_at"] or cfg.train_steps, cfg.train_steps):
        request.clear()  # all steps done: the batch shell must not requeue the job for more


if __name__ == "__main__":
    main()
