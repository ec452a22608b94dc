"""What each rank of an adaptation phase runs under torchrun / srun:
``python -m adapt.worker --job job.json``.

The job file (written by :func:`adapt.train.write_job`) holds the resolved ``adapt`` section, the
phase and its paths, and the checkpoint the stage chose to resume from. Each rank runs
:func:`adapt.train.train_rank`; the Trainer takes rank, world size and rendezvous from torchrun's
environment. Rank 0 writes the phase's metrics file and its records (:mod:`dasi.rank_records`),
which the stage replays into its RunLog when the ranks are done."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from dasi.determinism import pin_cpu_kernels

    pin_cpu_kernels()  # before torch is imported (by adapt.train), as `dasi` does
    from adapt.config import AdaptConfig
    from adapt.train import train_rank, write_metrics
    from dasi.rank_records import RecordLog

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--job", type=Path, required=True)
    job = json.loads(ap.parse_args(argv).job.read_text())
    rank = int(os.environ.get("RANK", "0"))
    log = RecordLog(Path(job["records"]), rank=rank)
    metrics = train_rank(AdaptConfig.model_validate(job["adapt"]), job["arm"], Path(job["base"]),
                         Path(job["curated"]), Path(job["out"]), Path(job["work"]),
                         Path(job["latest"]) if job["latest"] else None, log)
    if rank == 0:
        write_metrics(Path(job["metrics"]), metrics)


if __name__ == "__main__":
    main()
