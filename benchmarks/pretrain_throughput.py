"""Megatron-core pretraining throughput (tokens/s) of the selected profile's model on this machine.

    python benchmarks/pretrain_throughput.py [--steps 30] [--params params.yaml]

Runs the real pretrain loop on the packed data (run `dvc repro pack` first) into a temporary
checkpoint folder and prints the mean tokens/s over the steps after the first (warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from dasi.model_config import ModelConfig, parameter_count
from dasi.runlog import LoggingConfig, RunLog, read_jsonl
from dasi.stage import load_sections
from pretrain.config import PretrainConfig
from pretrain.loop import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--manifest", type=Path, default=Path("data/packed/manifest.json"))
    args = ap.parse_args()
    cfgs, _, profile = load_sections({"pretrain": PretrainConfig, "model": ModelConfig}, args.params)
    cfg = cfgs["pretrain"].model_copy(update={"train_steps": args.steps, "save_interval": 10**9,
                                              "eval_interval": 10**9, "warmup_steps": 1})
    with tempfile.TemporaryDirectory() as tmp:
        logging = LoggingConfig(logs_dir=tmp, wandb=False, tensorboard=False)
        with RunLog("bench", {}, logging=logging) as log:
            train(cfgs["model"], cfg, args.manifest, Path(tmp) / "ckpt", log)
        rates = [m["tokens_per_s"] for m in read_jsonl(log.dir / "metrics.jsonl")][1:]
    print(f"profile {profile}: {parameter_count(cfgs['model']):,} parameters, {args.steps} steps, "
          f"mean {statistics.mean(rates):,.0f} tokens/s (median {statistics.median(rates):,.0f})")


if __name__ == "__main__":
    main()
