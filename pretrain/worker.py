"""What each rank runs under torchrun / srun: ``python -m pretrain.worker --job job.json``.

Rank 0 writes metrics, events and the summary as JSON lines into the job's ``records`` file; the
stage replays them into its RunLog when the ranks are done.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from dasi.model_config import ModelConfig
from pretrain.config import PretrainConfig


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


def replay(records: Path, log: Any) -> dict[str, Any]:
    """Pass recorded lines on to ``log``; returns the summary."""
    summary: dict[str, Any] = {}
    if not Path(records).exists():
        return summary
    for line in Path(records).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["kind"] == "log":
            log.log(r["metrics"], step=r["step"])
        elif r["kind"] == "event":
            log.event(r["name"], **r["data"])
        else:
            summary = r["metrics"]
            log.summary(summary)
    return summary


def write_job(path: Path, model: ModelConfig, cfg: PretrainConfig, manifest: Path, checkpoints: Path,
              records: Path, stop_at: int | None = None) -> Path:
    job = {"model": model.model_dump(mode="json"), "pretrain": cfg.model_dump(mode="json"),
           "manifest": str(Path(manifest).resolve()), "checkpoints": str(Path(checkpoints).resolve()),
           "records": str(Path(records).resolve()), "stop_at": stop_at}
    Path(path).write_text(json.dumps(job, indent=2))
    return Path(path)


def main(argv: list[str] | None = None) -> None:
    from pretrain.loop import train

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--job", type=Path, required=True)
    job = json.loads(ap.parse_args(argv).job.read_text())
    log = RecordLog(Path(job["records"]), rank=int(os.environ.get("RANK", "0")))
    train(ModelConfig.model_validate(job["model"]), PretrainConfig.model_validate(job["pretrain"]),
          Path(job["manifest"]), Path(job["checkpoints"]), log, stop_at=job["stop_at"])


if __name__ == "__main__":
    main()
