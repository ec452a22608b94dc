"""What each rank runs under torchrun / srun: ``python -m instruct.worker --job job.json``.

The job file holds the resolved ``sft`` section and the stage's paths. Each rank runs
:func:`instruct.sft.train`; the Trainer takes rank, world size and rendezvous from torchrun's
environment. Rank 0 writes metrics, events and the summary as JSON lines into the job's
``records`` file, which the stage replays into its RunLog when the ranks are done.

(The records are :mod:`dasi.rank_records`'.)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from dasi.rank_records import RecordLog, replay
from instruct.config import SFTConfig

__all__ = ["RecordLog", "main", "replay", "write_job"]


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
