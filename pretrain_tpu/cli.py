"""The ``dasi-tpu`` command: the TPU path's stages (``pretrain_tpu/dvc.yaml`` runs them).

A command of its own, not a ``dasi`` sub-command: every stage of the main pipeline depends on
``dasi/cli.py``, and the TPU path changing should not re-run them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from dasi.atomic import write_json
from dasi.config import ConfigError

app = typer.Typer(
    help="dasi's TPU path: the same model and data pretrained with MaxText (JAX).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
ParamsOpt = Annotated[Path, typer.Option(help="params file (selects the profile, overrides it)")]
ProfilesOpt = Annotated[Path, typer.Option(help="folder of profiles")]
PACKED = Path("data/packed/manifest.json")
INIT = Path("data/tpu/init")


def _sections() -> dict:
    from dasi.model_config import ModelConfig
    from pretrain.config import PretrainConfig
    from pretrain_tpu.config import PretrainTpuConfig

    return {"pretrain_tpu": PretrainTpuConfig, "model": ModelConfig, "pretrain": PretrainConfig}


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "0")
    if value not in ("0", "1"):
        raise ConfigError(f"{name} = {value!r}: allowed: 1, 0")
    return value == "1"


@app.command()
def init(
    packed: Path = PACKED,
    tokenizer_dir: Path = Path("data/tokenizer"),
    out: Path = INIT,
    metrics: Path = Path("metrics/tpu/init.json"),
    params: ParamsOpt = Path("params.yaml"),
    profiles: ProfilesOpt = Path("configs"),
) -> None:
    """One seeded HF init, imported into MaxText and Megatron (each import parity-checked)."""
    from dasi.stage import run_stage
    from pretrain_tpu import shared_init

    run_stage(
        "tpu-init",
        _sections(),
        [packed, tokenizer_dir],
        [out, metrics],
        lambda cfg, m, p, log: shared_init.run(m, p, cfg, packed, tokenizer_dir, out, metrics, log),
        params,
        profiles,
    )


@app.command()
def pretrain(
    packed: Path = PACKED,
    init: Path = INIT,
    out: Path = Path("data/tpu/checkpoints"),
    metrics: Path = Path("metrics/tpu/pretrain.json"),
    curve: Path = Path("plots/tpu-pretrain/train.json"),
    dry_run: Annotated[
        bool, typer.Option(help="print the run config and the TPU launch, train nothing")
    ] = False,
    restart: Annotated[
        bool, typer.Option(help="delete the run and start over (also: DASI_RESTART=1)")
    ] = False,
    params: ParamsOpt = Path("params.yaml"),
    profiles: ProfilesOpt = Path("configs"),
) -> None:
    """MaxText pretraining of the model section on the packed data (local CPU/TPU VM, or a slice)."""
    from dasi.resume import FingerprintMismatch
    from dasi.stage import load_sections, run_stage
    from pretrain_tpu import train

    if dry_run:  # nothing runs, so nothing is logged
        cfgs, _, _ = load_sections(_sections(), params, profiles)
        typer.echo(
            train.run(
                cfgs["model"], cfgs["pretrain"], cfgs["pretrain_tpu"], packed, init, out, None, dry_run=True
            )["dry_run"]
        )
        return
    restart = restart or _env_flag("DASI_RESTART")
    try:
        result = run_stage(
            "tpu-pretrain",
            _sections(),
            [packed, init],
            [out],
            lambda cfg, m, p, log: train.run(m, p, cfg, packed, init, out, log, restart=restart),
            params,
            profiles,
        )
    except FingerprintMismatch as e:
        print(f"dasi-tpu: pretrain: {e}", file=sys.stderr)
        sys.exit(3)
    write_json(metrics, result["summary"])
    write_json(curve, result["curve"])


@app.command()
def export(
    checkpoints: Path = Path("data/tpu/checkpoints"),
    packed: Path = PACKED,
    tokenizer_dir: Path = Path("data/tokenizer"),
    out: Path = Path("data/hf/base-tpu"),
    metrics: Path = Path("metrics/tpu/export.json"),
    params: ParamsOpt = Path("params.yaml"),
    profiles: ProfilesOpt = Path("configs"),
) -> None:
    """The last MaxText checkpoint -> HF Llama folder, with a logit-parity check against MaxText."""
    from dasi.stage import run_stage
    from pretrain_tpu import export as stage

    run_stage(
        "tpu-export",
        _sections(),
        [checkpoints, packed, tokenizer_dir],
        [out, metrics],
        lambda cfg, m, p, log: stage.run(m, p, cfg, checkpoints, packed, tokenizer_dir, out, metrics, log),
        params,
        profiles,
    )


@app.command()
def megatron(
    packed: Path = PACKED,
    init: Path = INIT,
    out: Path = Path("data/tpu/megatron"),
    metrics: Path = Path("metrics/tpu/megatron.json"),
    curve: Path = Path("plots/tpu-megatron/train.json"),
    params: ParamsOpt = Path("params.yaml"),
    profiles: ProfilesOpt = Path("configs"),
) -> None:
    """The Megatron arm: the pretrain section's run from tpu-init's weights, for tpu-compare."""
    from dasi.stage import run_stage
    from pretrain_tpu import compare

    result = run_stage(
        "tpu-megatron",
        _sections(),
        [packed, init],
        [out],
        lambda cfg, m, p, log: compare.run_megatron(m, p, packed, init, out, log),
        params,
        profiles,
    )
    write_json(metrics, result["summary"])
    write_json(curve, result["curve"])


@app.command()
def compare(
    maxtext: Path = Path("plots/tpu-pretrain/train.json"),
    megatron: Path = Path("plots/tpu-megatron/train.json"),
    metrics: Path = Path("metrics/tpu/compare.json"),
    plot: Path = Path("plots/tpu/compare.json"),
    params: ParamsOpt = Path("params.yaml"),
    profiles: ProfilesOpt = Path("configs"),
) -> None:
    """MaxText's and Megatron's curves from the same weights: first-step agreement, drift after."""
    import json

    from dasi.stage import run_stage
    from pretrain_tpu import compare as stage

    def work(cfg, m, p, log):
        mt, mg = json.loads(maxtext.read_text()), json.loads(megatron.read_text())
        report = stage.compare(mt, mg, cfg.max_first_loss_diff)
        for row in stage.side_by_side(mt, mg):
            log.log({"maxtext_loss": row["maxtext"], "megatron_loss": row["megatron"]}, step=row["step"])
        log.summary(report)
        write_json(plot, stage.side_by_side(mt, mg))
        write_json(metrics, report)

    run_stage("tpu-compare", _sections(), [maxtext, megatron], [metrics, plot], work, params, profiles)


def main() -> None:
    from dasi.determinism import pin_cpu_kernels

    pin_cpu_kernels()  # before any stage imports torch (the Megatron arm trains here)
    try:
        app()
    except ConfigError as e:
        print(f"dasi-tpu: {e}", file=sys.stderr)
        sys.exit(2)
