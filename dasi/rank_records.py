"""What the ranks of a launched stage tell the stage: rank 0 writes its metrics, events and summary
as JSON lines into the job's ``records`` file, and the stage replays them into its RunLog when the
ranks are done. (pretrain.worker keeps its own copy of this format.)"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class RecordLog:
    """The RunLog writing interface, as JSON lines (only rank 0 writes). Each metrics record also
    carries ``elapsed_s``, the rank's clock: the run log's own ``time`` of a replayed record is
    when it was replayed, not when it was trained."""

    def __init__(self, path: Path, rank: int = 0) -> None:
        self.path, self.rank = Path(path), rank
        self.t0 = time.monotonic()

    def _write(self, kind: str, **data: Any) -> None:
        if self.rank == 0:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"kind": kind, **data}, default=float) + "\n")

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._write("log", metrics={**metrics, "elapsed_s": round(time.monotonic() - self.t0, 4)}, step=step)

    def event(self, name: str, **data: Any) -> None:
        self._write("event", name=name, data=data)

    def summary(self, metrics: dict[str, Any]) -> None:
        self._write("summary", metrics=metrics)


def replay(records: Path, log: Any) -> dict[str, Any]:
    """Pass the recorded lines on to ``log``; returns the summary ({} if none was written). A
    line cut off by a killed rank is counted in a ``records_unreadable`` event, not fatal."""
    summary: dict[str, Any] = {}
    if not Path(records).exists():
        return summary
    bad = 0
    for line in Path(records).read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if r["kind"] == "log":
            log.log(r["metrics"], step=r["step"])
        elif r["kind"] == "event":
            log.event(r["name"], **r["data"])
        else:
            summary = r["metrics"]
            log.summary(summary)
    if bad:
        log.event("records_unreadable", file=str(records), lines=bad)
    return summary
