"""Read run folders written by :mod:`dasi.runlog` for people: show one run."""

from __future__ import annotations

import json
from pathlib import Path

from dasi.runlog import read_jsonl


def show(run_dir: Path) -> str:
    run = json.loads((run_dir / "run.json").read_text())
    env = json.loads((run_dir / "env.json").read_text())
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    lines = [
        f"{run['stage']} {run['run_id']}  status={run['status']}  profile={run.get('profile')}",
        f"  elapsed {run.get('elapsed_s', '?')} s  git {env['git']['commit']} dirty={env['git']['dirty']}"
        f"  host {env['hostname']}  torch {env['packages'].get('torch')}",
        f"  {len(metrics)} metric records",
    ]
    lines += [f"  {k}: {v}" for k, v in summary.items()]
    return "\n".join(lines)
