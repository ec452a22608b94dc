"""Read run folders written by :mod:`dasi.runlog`: show one run, compare runs, plot curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dasi.nested import flatten
from dasi.runlog import read_jsonl


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def show(run_dir: Path) -> str:
    run = _json(run_dir / "run.json")
    env = _json(run_dir / "env.json")
    summary = _json(run_dir / "summary.json")
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    events = read_jsonl(run_dir / "events.jsonl")
    lines = [
        f"{run['stage']} {run['run_id']}  status={run['status']}  profile={run.get('profile')}",
        f"  elapsed {run.get('elapsed_s', '?')} s  git {env['git']['commit']} dirty={env['git']['dirty']}"
        f"  host {env['hostname']}  torch {env['packages'].get('torch')}",
        f"  {len(metrics)} metric records, {len(events)} events"
        + (f" ({', '.join(sorted({e['event'] for e in events}))})" if events else ""),
    ]
    lines += [f"  {k}: {v}" for k, v in summary.items()]
    return "\n".join(lines)


def compare(run_dirs: list[Path]) -> str:
    """Side by side: status, summaries, and the config keys whose values differ."""
    runs = [{"run": _json(d / "run.json"), "summary": flatten(_json(d / "summary.json")),
             "config": flatten(_json(d / "config.json"))} for d in run_dirs]
    names = [r["run"].get("run_id", str(d)) for r, d in zip(runs, run_dirs, strict=True)]
    rows = [("run", names), ("status", [r["run"].get("status") for r in runs]),
            ("elapsed_s", [r["run"].get("elapsed_s") for r in runs])]
    for key in sorted({k for r in runs for k in r["summary"]}):
        rows.append((key, [r["summary"].get(key) for r in runs]))
    for key in sorted({k for r in runs for k in r["config"]}):
        values = [r["config"].get(key) for r in runs]
        if any(v != values[0] for v in values):
            rows.append((f"config.{key}", values))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  " + "  ".join(f"{_fmt(v):>14}" for v in vs) for k, vs in rows)


def _fmt(v: Any) -> str:
    return f"{v:.5g}" if isinstance(v, float) else str(v)


def plot(run_dirs: list[Path], metric: str, out: Path) -> Path:
    """One line per run of ``metric`` against ``step`` from metrics.jsonl, saved as an image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for d in run_dirs:
        points = [(m["step"], m[metric]) for m in read_jsonl(d / "metrics.jsonl")
                  if m.get(metric) is not None and m.get("step") is not None]
        if not points:
            raise ValueError(f"{d}: no '{metric}' in metrics.jsonl")
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, label=Path(d).name)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
