"""``metrics/curate.json`` from the per-task stats files datatrove writes for every pass.

Each task's ``stats/<rank>.json`` is read (not the executor's merged ``stats.json``, which holds
only the tasks run by the last invocation, so a resumed run would lose the others). Steps are
matched to their stats by position in the pass. A removing step has a ``reason`` (its filter
name) and counts ``dropped/<source>``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from datatrove.pipeline.base import PipelineStep
from datatrove.utils.stats import MetricStats

STATS_FORMAT = "curate-stats/2"

Counts = dict[str, tuple[int, float]]  # stat key -> (n, total)


def n_total(value: float | dict) -> tuple[int, float]:
    """(updates, sum) of a saved MetricStats: datatrove saves a bare number when every update
    added 1 (so the count is the number), and a dict otherwise."""
    if not isinstance(value, dict):
        return int(value), float(value)
    m = MetricStats.from_dict(value)
    return m.n, m.total


def merged_step_stats(logging_dir: Path, tasks: int, steps: int) -> list[Counts]:
    """(n, total) of every stat key, per step of a pass, summed over its ``tasks`` task files."""
    merged: list[dict[str, list[float]]] = [defaultdict(lambda: [0, 0.0]) for _ in range(steps)]
    for rank in range(tasks):
        blocks = json.loads((Path(logging_dir) / "stats" / f"{rank:05d}.json").read_text())
        for i, block in enumerate(blocks):
            for key, value in block["stats"].items():
                n, total = n_total(value)
                merged[i][key][0] += n
                merged[i][key][1] += total
    return [{k: (int(n), t) for k, (n, t) in step.items()} for step in merged]


def by_source(counts: Counts, prefix: str) -> dict[str, tuple[int, float]]:
    """``prefix/<source>`` keys as {source: (n, total)}."""
    return {k.split("/", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith(prefix + "/")}


def curate_stats(passes: list[tuple[str, list[PipelineStep], int, Path]]) -> dict:
    """Stats of a finished run; ``passes``: (name, pipeline, tasks, logging dir) in run order,
    the last one writing the output."""
    inputs: dict[str, int] = {}
    removed: dict[str, dict[str, dict[str, int]]] = {}
    reasons: dict[str, int] = {}
    pii: dict[str, dict[str, int]] = defaultdict(dict)
    kept: dict[str, dict[str, int]] = {}
    splits: dict[str, dict[str, int]] = defaultdict(dict)
    clusters = 0
    for name, steps, tasks, logging_dir in passes:
        final = name == passes[-1][0]  # its writer's counts are the output's (pass 1 writes too)
        for step, counts in zip(steps, merged_step_stats(logging_dir, tasks, len(steps)), strict=True):
            reason = getattr(step, "reason", None)
            if reason is not None:
                removed[reason] = {s: {"documents": n} for s, (n, _) in by_source(counts, "dropped").items()}
                reasons |= {f"{reason}:{k.removeprefix('dropped_')}": n
                            for k, (n, _) in sorted(counts.items()) if k.startswith("dropped_")}
            inputs |= {s: n for s, (n, _) in by_source(counts, "input").items()}
            if final:
                kept |= {s: {"documents": n, "bytes": int(b)}
                         for s, (n, b) in by_source(counts, "kept").items()}
            for key, (n, total) in counts.items():
                if key.startswith("pii_") and not key.startswith("pii_docs/"):
                    kind, source = key.removeprefix("pii_").split("/", 1)
                    pii[kind][source] = int(total)
                elif key.startswith("split_") and final:
                    split, lang = key.removeprefix("split_").split("/", 1)
                    splits[split][lang] = n
            clusters += counts.get("clusters", (0, 0))[0]
    return assemble(inputs, removed, reasons, dict(pii), kept, dict(splits), clusters)


def assemble(inputs: dict[str, int], removed: dict[str, dict[str, dict[str, int]]], reasons: dict[str, int],
             pii: dict[str, dict[str, int]], kept: dict[str, dict[str, int]],
             splits: dict[str, dict[str, int]], clusters: int) -> dict:
    syn_ko = inputs.get("synthetic_ko", 0)
    # A Korean request whose answer any filter dropped is a teacher failure: count it.
    ko_failed = sum(r.get("synthetic_ko", {"documents": 0})["documents"] for r in removed.values())
    kept_docs = sum(v["documents"] for v in kept.values())
    return {
        "format": STATS_FORMAT,
        "input_documents": sum(inputs.values()),
        "input_by_source": dict(sorted(inputs.items())),
        "kept_documents": kept_docs,
        "kept_bytes": sum(v["bytes"] for v in kept.values()),
        "kept_by_source": dict(sorted(kept.items())),
        "removed_by_filter": {f: dict(sorted(v.items())) for f, v in removed.items()},
        "removed_documents": {f: sum(x["documents"] for x in v.values()) for f, v in removed.items()},
        "removed_by_reason": dict(sorted(reasons.items())),
        "near_duplicate_clusters": clusters,
        "pii_replaced": {k: dict(sorted(v.items())) for k, v in sorted(pii.items())},
        "synthetic_ko_requests": syn_ko,
        "synthetic_ko_failed": ko_failed,
        "synthetic_ko_failed_fraction": ko_failed / syn_ko if syn_ko else 0.0,
        # Korean requests that became kept Korean documents (LID and Hangul ratio checked).
        "synthetic_ko_kept": syn_ko - ko_failed,
        "synthetic_ko_kept_fraction": (syn_ko - ko_failed) / syn_ko if syn_ko else 0.0,
        "split_documents": {s: sum(splits.get(s, {}).values()) for s in ("train", "heldout")},
        "split_by_lang": {s: dict(sorted(v.items())) for s, v in sorted(splits.items())},
    }
