"""The run-log format every stage writes: ``logs/<stage>/<run-id>/`` (documented in logs/README.md).

Files in a run folder:
  run.json       format version, stage, run id, profile, command line, start/end, status
                 (running, ok, failed, interrupted, or died: set by the next run of the stage
                 when the process of a "running" run on this host is gone)
  config.json    the stage's resolved, validated config
  env.json       Python, packages, git commit + dirty flag (or why git could not say), host,
                 CPU/GPU, the lock file's path + sha256 and the packages that differ from it
  inputs.json    sha256 of every input file/folder at start
  outputs.json   every output at the end: {path: {"mode", "files", "bytes", and "sha256" (mode
                 sha256: of the content) or "sizes_sha256" (mode size: of the sorted
                 (relative path, size) list)}}; null for an output that is missing
  metrics.jsonl  one JSON object per line: {"step", "time", <metric>: <value>, ...}
  events.jsonl   one JSON object per line: {"time", "event", ...} (resume, skip, warning;
                 git_unavailable, lock_missing, env_differs_from_lock at the start)
  summary.json   final metrics of the run
  wandb/, tb/    optional offline W&B run and TensorBoard events mirroring metrics.jsonl

An ``ok`` run of a plotted stage (pretrain, sft) also writes its curves at fixed paths for
`dvc plots`: ``plots/<stage>/*.json`` beside the logs folder (dasi/curves.py).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from dasi.atomic import write_json
from dasi.integrity import VerifyMode
from dasi.provenance import environment, environment_events, hash_paths, sha256_path, sha256_text
from dasi.strict import StrictModel

FORMAT = "dasi.runlog/2"  # /2: outputs.json records the hashing mode, file count and bytes


class LoggingConfig(StrictModel):
    logs_dir: str = "logs"  # pretrain and sft also write curves to plots/ beside it (dasi.curves)
    wandb: bool = True
    wandb_project: str = "dasi"
    tensorboard: bool = True


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def new_run_id(config_json: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{sha256_text(config_json)[:8]}"


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def output_record(path: Path, mode: VerifyMode = "sha256") -> dict[str, Any] | None:
    """What outputs.json says of ``path``: sha256 reads every byte; size only stats, for outputs
    too big to read again at the end of a run (a 10.8B run's checkpoint folder holds terabytes)."""
    path = Path(path)
    if not path.exists():
        return None
    files = _files(path)
    rec: dict[str, Any] = {"mode": mode, "files": len(files), "bytes": sum(f.stat().st_size for f in files)}
    if mode == "sha256":
        rec["sha256"] = sha256_path(path)
    else:
        base = path if path.is_dir() else path.parent
        listing = "".join(f"{f.relative_to(base).as_posix()}\0{f.stat().st_size}\n" for f in files)
        rec["sizes_sha256"] = sha256_text(listing)
    return rec


class Terminated(BaseException):
    """SIGTERM (Slurm's time limit, ``kill``) raised inside the run, so that it is recorded."""


def _terminate_as_exception():
    """In the main thread, turn SIGTERM into :class:`Terminated`; returns the old handler."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Terminated(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)


def this_process() -> dict[str, Any]:
    """Enough to tell later whether this process is still alive (a pid alone can be reused)."""
    import socket

    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(),
            "create_time": psutil.Process().create_time()}


def _alive(proc: dict[str, Any]) -> bool:
    import psutil

    try:
        return psutil.Process(proc["pid"]).create_time() == proc["create_time"]
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError):
        return False


def mark_dead_runs(stage_dir: Path, by: str) -> list[str]:
    """Runs of this stage still saying ``running`` whose process on this host is gone (killed,
    out of memory, machine reset) get ``status: died``; returns their ids. Runs of other hosts
    are left alone: from here nothing tells whether they still run."""
    import socket

    host, dead = socket.gethostname(), []
    for run_file in sorted(Path(stage_dir).glob("*/run.json")):
        try:
            run = json.loads(run_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        proc = run.get("process") or {}
        if run.get("status") != "running" or run.get("run_id") == by or proc.get("host") != host:
            continue
        if not _alive(proc):
            run.update(status="died", died_noticed_by=by, died_noticed_at=datetime.now(UTC).isoformat())
            write_json(run_file, run)
            dead.append(run["run_id"])
    return dead


class RunLog:
    """A context manager around one stage run; see the module docstring for the files it writes."""

    def __init__(
        self,
        stage: str,
        config: BaseModel | dict[str, Any],
        inputs: list[Path] | None = None,
        outputs: list[Path] | None = None,
        logging: LoggingConfig | None = None,
        profile: str | None = None,
        run_id: str | None = None,
        rank: int = 0,
    ) -> None:
        self.stage = stage
        self.config = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
        self.inputs = [Path(p) for p in inputs or []]
        self.outputs = [Path(p) for p in outputs or []]
        self.outputs_mode: VerifyMode = "sha256"
        self.logging = logging or LoggingConfig()
        self.profile = profile
        cfg_json = json.dumps(self.config, sort_keys=True)
        self.run_id = run_id or new_run_id(cfg_json)
        self.dir = Path(self.logging.logs_dir) / stage / self.run_id
        self.rank = rank  # only rank 0 writes
        self._wandb = None
        self._tb = None
        self._t0 = time.time()
        self._run: dict[str, Any] = {}
        self._sigterm = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> RunLog:
        if self.rank != 0:
            return self
        n = 1
        while self.dir.exists():  # two runs of one config in the same second
            n += 1
            self.dir = self.dir.with_name(f"{self.run_id}.{n}")
        self.run_id = self.dir.name
        self.dir.mkdir(parents=True)
        self._run = {
            "format": FORMAT,
            "stage": self.stage,
            "run_id": self.run_id,
            "profile": self.profile,
            "argv": sys.argv,
            "cwd": os.getcwd(),
            "started": datetime.now(UTC).isoformat(),
            "status": "running",
            "process": this_process(),
        }
        write_json(self.dir / "run.json", self._run)
        for dead in mark_dead_runs(self.dir.parent, self.run_id):
            self.event("previous_run_died", run_id=dead)
        write_json(self.dir / "config.json", self.config)
        env = environment()
        write_json(self.dir / "env.json", env)
        for name, data in environment_events(env):  # git unavailable, packages differ from the lock
            self.event(name, **data)
        write_json(self.dir / "inputs.json", hash_paths(self.inputs))
        self._start_mirrors()
        self._sigterm = _terminate_as_exception()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.rank != 0:
            return
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
        if exc_type is None:
            try:
                self._write_curves()
                write_json(self.dir / "outputs.json",
                           {str(p): output_record(p, self.outputs_mode) for p in self.outputs})
            except BaseException as e:  # recorded as the run's failure, then raised
                self._close(type(e), e)
                raise
        self._close(exc_type, exc)

    def _close(self, exc_type, exc) -> None:
        ok = exc_type is None
        self._run.update(
            status="ok" if ok else {KeyboardInterrupt: "interrupted", Terminated: "terminated"}.get(
                exc_type, "failed"),
            ended=datetime.now(UTC).isoformat(),
            elapsed_s=round(time.time() - self._t0, 3),
        )
        if not ok:
            self._run["error"] = f"{exc_type.__name__}: {exc}"
        write_json(self.dir / "run.json", self._run)
        self._stop_mirrors(ok)

    def _write_curves(self) -> None:
        """A plotted stage's curves at the fixed paths `dvc plots` reads (see dasi.curves)."""
        from dasi.curves import plots_dir, write_curves

        write_curves(self.stage, self.dir, plots_dir(Path(self.logging.logs_dir)))

    def hash_outputs(self, mode: VerifyMode) -> None:
        """How outputs.json is computed at the end: ``sha256`` (the default) or ``size``."""
        self.outputs_mode = mode

    # -- writing ---------------------------------------------------------------------------
    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Append one metrics record and mirror it to W&B / TensorBoard."""
        if self.rank != 0:
            return
        record = {"step": step, "time": round(time.time() - self._t0, 4)}
        record.update({k: _jsonable(v) for k, v in metrics.items()})
        with open(self.dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        numeric = {k: v for k, v in metrics.items() if isinstance(_jsonable(v), (int, float))}
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, _jsonable(v), global_step=step or 0)

    def event(self, name: str, **data: Any) -> None:
        if self.rank != 0:
            return
        record = {"time": datetime.now(UTC).isoformat(), "event": name}
        record.update({k: _jsonable(v) for k, v in data.items()})
        with open(self.dir / "events.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        write_json(self.dir / "summary.json", {k: _jsonable(v) for k, v in metrics.items()})
        if self._wandb is not None:
            self._wandb.summary.update({k: _jsonable(v) for k, v in metrics.items()})

    # -- mirrors ---------------------------------------------------------------------------
    def _start_mirrors(self) -> None:
        if self.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.dir / "tb"))
        if self.logging.wandb:
            wdir = self.dir / "wandb"
            wdir.mkdir()
            # wandb makes temp folders when first imported: keep them in the run folder too.
            saved, tempfile.tempdir = tempfile.tempdir, str(wdir)
            try:
                import wandb
            finally:
                tempfile.tempdir = saved
            # Keep every W&B file inside the run folder, never under ~.
            for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
                os.environ[var] = str(wdir.resolve())
            os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_SILENT", "true")
            self._wandb = wandb.init(
                project=self.logging.wandb_project,
                name=self.run_id,
                id=self.run_id.replace(".", "-"),
                group=self.stage,
                job_type=self.stage,
                dir=str(wdir),
                config=self.config,
                settings=wandb.Settings(console="off", x_disable_stats=True),
            )

    def _stop_mirrors(self, ok: bool) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish(exit_code=0 if ok else 1)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
