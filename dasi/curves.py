"""The curves `dvc plots` draws, at fixed paths: ``plots/<stage>/<curve>.json`` beside the logs folder.

A run log holds what one run logged, and its folder's name changes with every run, while `dvc plots`
reads fixed paths. So at the end of an ``ok`` run of a plotted stage (pretrain, sft) the RunLog writes
each curve of :data:`CURVES` as a JSON list of rows ``{"step", <column>: value or null}``.

The curve is that of the outputs the run leaves, stitched from the stage's runs: a resumed pretrain
run logs only the steps after its checkpoint, and a run that reuses finished checkpoints logs none.
:func:`lineage` walks back from the run, taking from each earlier run the steps up to where the later
one resumed, until a run that trained from step 0 (or deleted the checkpoints: ``restart``).

Curves from the clock (tokens/s, MFU) are ``timed``: they differ between two runs of the same inputs,
so dvc.yaml declares only the others as outputs (dvc.lock hashes every output, and a forced re-run
must give the same lock); the timed files are referenced by its top-level ``plots:`` alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dasi.atomic import write_json

# The steps a run logged before these events came from earlier runs' checkpoints.
CONTINUES = ("resume", "reuse_finished")
# The trainer's count of tokens seen so far: its rate is SFT's throughput (SFT logs no tokens/s).
TOKENS_SEEN = "train/num_tokens"


@dataclass(frozen=True)
class Curve:
    name: str                  # the file: plots/<stage>/<name>.json
    columns: dict[str, str]    # column in the file -> key in metrics.jsonl
    timed: bool = False        # values from the clock: not a DVC output


CURVES: dict[str, tuple[Curve, ...]] = {
    "pretrain": (
        Curve("train", {"loss": "loss", "lr": "lr", "grad_norm": "grad_norm"}),
        Curve("valid", {"valid_loss": "valid_loss"}),
        Curve("throughput", {"tokens_per_s_per_device": "tokens_per_s_per_device",
                             "tflops_per_device": "tflops_per_device"}, timed=True),
        Curve("mfu", {"mfu": "mfu"}, timed=True),  # [] where no device peak is known (CPU)
    ),
    "sft": (
        Curve("train", {"loss": "train/loss", "lr": "train/learning_rate", "grad_norm": "train/grad_norm"}),
        Curve("heldout", {"heldout_loss": "heldout_loss/all", "heldout_loss_ko": "heldout_loss/ko",
                          "heldout_loss_en": "heldout_loss/en"}),
        # all devices together: the trainer's token count is summed over its processes
        Curve("throughput", {"tokens_per_s": "tokens_per_s"}, timed=True),
    ),
    # the adaptation path's training phases and its baseline arm (adapt/dvc.yaml)
    **{f"adapt-{phase}": (
        Curve("train", {"loss": "train/loss", "lr": "train/learning_rate", "grad_norm": "train/grad_norm"}),
    ) for phase in ("embed-head", "odd-layers", "even-layers", "lora", "baseline")},
}


def plots_dir(logs_dir: Path) -> Path:
    """``plots`` beside the logs folder: the repository's ``plots/`` for the default ``logs``."""
    return Path(logs_dir).parent / "plots"


def curve_files(stage: str, root: Path = Path("plots"), timed: bool | None = None) -> list[Path]:
    """The files of ``stage``'s curves under ``root`` (only the timed or untimed ones if asked)."""
    return [root / stage / f"{c.name}.json" for c in CURVES.get(stage, ())
            if timed is None or c.timed == timed]


def jsonl_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file, less a line a killed run left half-written."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in out if isinstance(r, dict)]


def finite(value: Any) -> float | None:
    """A finite number or None (the run log writes NaN and inf as strings; booleans are flags)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def with_token_rate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``tokens_per_s`` added to each record whose :data:`TOKENS_SEEN` grew since the previous
    one of the same run (the first has no rate). A record's own ``elapsed_s`` (written by the
    training ranks) is its time when present: records replayed from torchrun/Slurm ranks carry the
    replay's clock in ``time``."""
    out, last = [], None
    for r in records:
        seen = finite(r.get(TOKENS_SEEN))
        t = finite(r.get("elapsed_s")) if finite(r.get("elapsed_s")) is not None else finite(r.get("time"))
        if seen is not None and t is not None:
            if last is not None and t > last[1] and seen > last[0]:
                r = {**r, "tokens_per_s": (seen - last[0]) / (t - last[1])}
            last = (seen, t)
        out.append(r)
    return out


def by_step(run_dir: Path) -> dict[int, dict[str, Any]]:
    """The run's records merged per step (a step can have several: training, then held-out loss)."""
    steps: dict[int, dict[str, Any]] = {}
    for r in with_token_rate(jsonl_records(Path(run_dir) / "metrics.jsonl")):
        if isinstance(r.get("step"), int):
            steps.setdefault(r["step"], {}).update(r)
    return steps


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("status")
    except (OSError, json.JSONDecodeError):
        return None


def lineage(run_dir: Path) -> list[tuple[Path, int | None]]:
    """``run_dir`` and the earlier runs of its stage whose steps its outputs carry on, newest
    first, each with the last step it contributes (None: all)."""
    run_dir = Path(run_dir)
    earlier = sorted((d for d in run_dir.parent.iterdir()
                      if d.name < run_dir.name and (d / "run.json").is_file()), reverse=True)
    chain: list[tuple[Path, int | None]] = []
    upto: int | None = None
    for run in [run_dir, *earlier]:
        if run != run_dir and _status(run) == "running":  # another process, still going
            continue
        chain.append((run, upto))
        events = jsonl_records(run / "events.jsonl")
        starts = [e["step"] for e in events if e.get("event") in CONTINUES and isinstance(e.get("step"), int)]
        if starts:  # its first steps were trained by earlier runs
            upto = min(starts) if upto is None else min(upto, *starts)
            continue
        if any(e.get("event") == "restart" for e in events) or by_step(run):
            break  # trained from step 0, or deleted what came before
    return chain


def stitched(run_dir: Path) -> dict[int, dict[str, Any]]:
    """Every step of the outputs ``run_dir`` leaves, each from the latest run that trained it."""
    steps: dict[int, dict[str, Any]] = {}
    for run, upto in lineage(run_dir):
        for step, record in by_step(run).items():
            if (upto is None or step <= upto) and step not in steps:
                steps[step] = record
    return dict(sorted(steps.items()))


def rows(curve: Curve, steps: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step that has any of the curve's columns; the others null (DVC's templates
    need every column in every row)."""
    out = []
    for step, record in steps.items():
        values = {col: finite(record.get(key)) for col, key in curve.columns.items()}
        if any(v is not None for v in values.values()):
            out.append({"step": step, **values})
    return out


def write_curves(stage: str, run_dir: Path, root: Path) -> list[Path]:
    """Write ``stage``'s curves (none if it has no entry in :data:`CURVES`) under ``root``."""
    curves = CURVES.get(stage, ())
    steps = stitched(run_dir) if curves else {}
    written = []
    for curve in curves:
        path = root / stage / f"{curve.name}.json"
        write_json(path, rows(curve, steps))
        written.append(path)
    return written
