"""What each rank runs under torchrun / srun: ``python -m instruct.worker --job job.json``.

The job file holds the resolved ``sft`` section and the stage's paths. Each rank runs
:func:`instruct.sft.train`; the Trainer takes rank, world size and rendezvous from torchrun's
environment. Rank 0 writes metrics, events and the summary as JSON lines into the job's
``records`` file, which the stage replays into its RunLog when the ranks are done.

(The record format is pretrain.worker's; it is not imported from there so that a change to the
pretrain package does not make DVC re-run SFT.)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from instruct.config import SFTConfig


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


def write_job(path: Path, cfg: SFTConfig, base: Path, tokenizer_dir: Path | None, extra_chats: list[Path],
              out: Path, metrics: Path, records: Path) -> Path:
    """The job file; paths absolute, as ranks on other nodes may start elsewhere."""
    def where(p: Path) -> str:
        return str(Path(p).resolve())

    job = {"sft": cfg.model_dump(mode="json"), "base": where(base),
           "tokenizer_dir": where(tokenizer_dir) if tokenizer_dir else None,
           "extra_chats": [where(p) for p in extra_chats], "out": where(out), "metrics": where(metrics),
           "records": where(records)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(job, indent=2) + "\n")
    return Path(path)


def main(argv: list[str] | None = None) -> None:
    from dasi.determinism import pin_cpu_kernels

    pin_cpu_kernels()  # before torch is imported (by instruct.sft), as `dasi` does
    from instruct.sft import train

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--job", type=Path, required=True)
    job = json.loads(ap.parse_args(argv).job.read_text())
    log = RecordLog(Path(job["records"]), rank=int(os.environ.get("RANK", "0")))
    train(SFTConfig.model_validate(job["sft"]), Path(job["base"]),
          Path(job["tokenizer_dir"]) if job["tokenizer_dir"] else None, [Path(p) for p in job["extra_chats"]],
          Path(job["out"]), Path(job["metrics"]), log)


if __name__ == "__main__":
    main()
