"""Stages ``tpu-megatron`` and ``tpu-compare``: the same run on both engines, side by side.

``tpu-megatron`` is the Megatron path's pretraining with one change: it starts from ``tpu-init``'s
weights (``pretrain.init_from``), the weights ``tpu-pretrain`` starts from in MaxText. Same data,
sample order, batch, schedule and optimiser settings. ``tpu-compare`` lays the two loss curves side
by side. The first step's loss is the same forward pass of the same weights on the same batch:
it must agree to ``pretrain_tpu.max_first_loss_diff``. Later steps drift apart by design, and the
report says by how much: MaxText keeps attention's 1/sqrt(head_dim) inside the query weights, so
Adam's step on them is sqrt(head_dim) times larger in HF terms, and the query gradients enter the
clipping norm scaled the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dasi.model_config import ModelConfig
from pretrain import stage as megatron
from pretrain.config import PretrainConfig

COLUMNS = ("loss", "lr", "grad_norm")


class FirstStepMismatch(ValueError):
    pass


def run_megatron(
    m: ModelConfig, p: PretrainConfig, manifest: Path, init: Path, out: Path, log: Any
) -> dict[str, Any]:
    cfg = p.model_copy(update={"init_from": str(Path(init) / "megatron")})
    summary = megatron.run(m, cfg, manifest, out, log)
    rows = [json.loads(line) for line in (log.dir / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in rows if "loss" in r}
    return {
        "summary": {k: v for k, v in summary.items() if k not in megatron.HISTORY_KEYS},
        "curve": [{"step": s, **{k: steps[s][k] for k in COLUMNS}} for s in sorted(steps)],
    }


def compare(
    maxtext: list[dict[str, Any]], megatron_rows: list[dict[str, Any]], gate: float
) -> dict[str, Any]:
    mt = {r["step"]: r for r in maxtext}
    mg = {r["step"]: r for r in megatron_rows}
    if sorted(mt) != sorted(mg):
        raise ValueError(f"the curves cover other steps: maxtext {len(mt)}, megatron {len(mg)}")
    steps = sorted(mt)
    loss = [abs(mt[s]["loss"] - mg[s]["loss"]) for s in steps]
    first = loss[0]
    report = {
        "format": "tpu-compare/1",
        "steps": len(steps),
        "dtype": "float32",
        "device": "cpu",
        "first_step": {
            "maxtext": mt[steps[0]]["loss"],
            "megatron": mg[steps[0]]["loss"],
            "abs_diff": first,
            "max_abs_diff": gate,
            "passed": first <= gate,
        },
        "loss_abs_diff": {
            "max": max(loss),
            "mean": sum(loss) / len(loss),
            "final": loss[-1],
            "max_step": steps[loss.index(max(loss))],
            "first_10_max": max(loss[:10]),
        },
        "final_loss": {"maxtext": mt[steps[-1]]["loss"], "megatron": mg[steps[-1]]["loss"]},
        # Megatron logs the rate after its scheduler's step (the next step's), MaxText the one it
        # used: the same schedule is MaxText's step s+1 against Megatron's step s.
        "lr_max_abs_diff": max(abs(mt[s + 1]["lr"] - mg[s]["lr"]) for s in steps[:-1]),
    }
    if not report["first_step"]["passed"]:
        raise FirstStepMismatch(
            f"first-step loss: maxtext {mt[steps[0]]['loss']} vs megatron "
            f"{mg[steps[0]]['loss']}: |diff| {first:.3g} > {gate}"
        )
    return report


def side_by_side(maxtext: list[dict[str, Any]], megatron_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    mg = {r["step"]: r for r in megatron_rows}
    return [
        {"step": r["step"], "maxtext": r["loss"], "megatron": mg[r["step"]]["loss"]}
        for r in maxtext
        if r["step"] in mg
    ]
