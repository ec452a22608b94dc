"""`dasi pack` and `dasi pretrain` killed (SIGKILL, whole process group) at seeded random moments,
then re-run to completion: the same bytes as an uninterrupted run, no step lost or done twice
differently."""

import json
import os
from pathlib import Path

import pytest

from pretrain.stage import HISTORY_KEYS
from tests.faults import kill_then_finish, seeded_delays, time_between, timed_run, tree_digest
from tests.pretrain.conftest import PRETRAIN, ROOT, cli_workspace, dasi

pytestmark = pytest.mark.slow

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_pack_killed_anywhere_gives_the_uninterrupted_bytes(tmp_path, packed, curated_dir,
                                                            tokenizer_dir) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from data_gen.curated import read_manifest
    from pretrain.pack import load_manifest

    cmd = dasi("pack", "--curated", str(curated_dir), "--tokenizer-dir", str(tokenizer_dir), "--out", "out")
    ref, ws = cli_workspace(tmp_path / "ref", packed), cli_workspace(tmp_path / "run", packed)
    wall = timed_run(cmd, cwd=ref, env=ENV)
    killed = kill_then_finish(cmd, seeded_delays(11, 2, 0.3 * wall, 0.95 * wall), cwd=ws, env=ENV)
    assert any(killed)
    assert tree_digest(ws / "out") == tree_digest(ref / "out")
    assert sorted(p.name for p in ws.iterdir()) == sorted(p.name for p in ref.iterdir())  # no temp left
    manifest = load_manifest(ws / "out" / "manifest.json")
    for d in manifest.datasets:  # every document once
        assert len(IndexedDataset(str(ws / "out" / d.prefix))) == d.documents
    assert sum(d.documents for d in manifest.datasets) == read_manifest(curated_dir)["rows"]


def _losses(ws: Path) -> dict[int, set[float]]:
    """Every loss each step logged over all launches (a killed launch may end mid-line)."""
    out: dict[int, set[float]] = {}
    for f in (ws / "logs" / "pretrain").glob("*/metrics.jsonl"):
        lines = f.read_text().splitlines()
        for i, line in enumerate(lines):
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                assert i == len(lines) - 1, f"{f}: a broken line that is not the last"
                continue
            out.setdefault(r["step"], set()).add(r["loss"])
    return out


def _events(ws: Path) -> list[str]:
    return [json.loads(line)["event"] for f in (ws / "logs" / "pretrain").glob("*/events.jsonl")
            for line in f.read_text().splitlines() if line.endswith("}")]


def test_pretrain_killed_anywhere_gives_the_uninterrupted_bytes(tmp_path, packed) -> None:
    cfg = dict(train_steps=10, micro_batch_size=2, global_batch_size=4, lr=3e-3, min_lr=3e-4,
               warmup_steps=1, eval_interval=5, eval_iters=1, save_interval=2)
    cmd = dasi(*PRETRAIN)
    ref, ws = cli_workspace(tmp_path / "ref", packed, cfg), cli_workspace(tmp_path / "run", packed, cfg)
    # seeded moments between the first checkpoint and the last one (as long apart as in an
    # uninterrupted run here), so that a resume is always tested: a fixed delay could land after
    # the last step on a fast host, and the next launch would only reuse the finished run
    def checkpoint(root: Path, name: str):
        return lambda: (root / "checkpoints" / name).exists()

    window = time_between(cmd, checkpoint(ref, "latest"), checkpoint(ref, "iter_0000010"), cwd=ref, env=ENV)
    killed = kill_then_finish(cmd, seeded_delays(5, 3, 0.0, 0.6 * window), cwd=ws, env=ENV,
                              ready=checkpoint(ws, "latest"))
    assert any(killed) and "resume" in _events(ws)  # a kill landed after a checkpoint

    def outputs(root: Path) -> dict[str, str]:  # history/ holds wall times and launch counts
        return {k: v for k, v in tree_digest(root / "checkpoints").items() if "/history/" not in k}

    assert outputs(ws) == outputs(ref)
    ref_m, run_m = (json.loads((root / "metrics" / "pretrain.json").read_text()) for root in (ref, ws))
    assert run_m == ref_m and not set(run_m) & set(HISTORY_KEYS)  # timings live in the run logs

    def last_summary(root: Path) -> dict:
        runs = sorted((root / "logs" / "pretrain").iterdir(), key=lambda d: d.stat().st_mtime)
        return json.loads((runs[-1] / "summary.json").read_text())

    # launches that saved a checkpoint, in the run log's whole-run summary
    assert last_summary(ref)["segments"] == 1 and last_summary(ws)["segments"] >= 2
    # every step logged, and a step redone after a kill gave the very same loss
    assert _losses(ws) == _losses(ref) and sorted(_losses(ref)) == list(range(1, 11))
