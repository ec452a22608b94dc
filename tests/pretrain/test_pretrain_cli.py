"""The real `dasi pretrain` command on damaged inputs and changed settings: one line on stderr
naming the file or the change, a nonzero exit, and the checkpoints untouched."""

import json
import shutil
from pathlib import Path

import pytest

from tests.pretrain.conftest import PRETRAIN, cli_workspace, last_line, run_dasi
from tests.pretrain.test_pack import DAMAGE
from tests.pretrain.test_pretrain import _digest


@pytest.fixture(scope="module")
def trained(tmp_path_factory, packed) -> Path:
    """A workspace whose `dasi pretrain` finished (4 steps, checkpoints at 2 and 4)."""
    root = cli_workspace(tmp_path_factory.mktemp("trained"), packed)
    done = run_dasi(root, *PRETRAIN)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.fixture
def workspace(trained, tmp_path) -> Path:
    shutil.copytree(trained, tmp_path / "w", symlinks=True)
    return tmp_path / "w"


def _damage_checkpoint(root: Path) -> tuple[str, str]:
    target = root / "checkpoints" / "iter_0000004" / "common.pt"
    data = bytearray(target.read_bytes())
    data[-40] ^= 1
    target.write_bytes(bytes(data))
    return "checkpoints/iter_0000004/common.pt", "sha256 differs"


def _damage_packed(case: str):
    name, damage, what = DAMAGE[case]

    def apply(root: Path) -> tuple[str, str]:
        damage(root / "packed" / name)
        return f"packed/{name}", what
    return apply


CASES = {**{case: _damage_packed(case) for case in DAMAGE}, "altered checkpoint": _damage_checkpoint}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pretrain_stops_on_a_damaged_file_in_one_line(workspace, case) -> None:
    path, what = CASES[case](workspace)
    metrics = workspace / "metrics" / "pretrain.json"
    before, finished = _digest(workspace / "checkpoints"), metrics.read_bytes()
    out = run_dasi(workspace, *PRETRAIN)
    assert out.returncode == 4, out.stderr[-3000:]
    assert last_line(out.stderr).startswith(f"dasi: integrity error: {path}: {what}")
    assert "Traceback" not in out.stderr
    assert _digest(workspace / "checkpoints") == before
    assert metrics.read_bytes() == finished


def test_changed_settings_stop_until_restart_and_a_rerun_reuses(workspace) -> None:
    metrics = workspace / "metrics" / "pretrain.json"
    finished = metrics.read_bytes()
    again = run_dasi(workspace, *PRETRAIN)  # as `dvc repro -f pretrain`: same metrics, nothing retrained
    assert again.returncode == 0, again.stderr[-3000:]
    assert metrics.read_bytes() == finished
    profile = workspace / "configs" / "w.yaml"
    profile.write_text(profile.read_text().replace("lr: 0.003", "lr: 0.002"))
    before = _digest(workspace / "checkpoints")
    out = run_dasi(workspace, *PRETRAIN)
    assert out.returncode == 3
    assert last_line(out.stderr) == (
        "dasi: pretrain: checkpoints holds 2 checkpoints (iter_0000002 .. iter_0000004) made from other "
        "inputs (changed: optimisation); nothing was deleted. To start over: dasi pretrain --restart or "
        "DASI_RESTART=1 dvc repro pretrain (deletes them), or move the folder away")
    assert _digest(workspace / "checkpoints") == before
    bad = run_dasi(workspace, *PRETRAIN, DASI_RESTART="yes")
    assert bad.returncode == 2 and last_line(bad.stderr) == (
        "dasi: config error: DASI_RESTART = 'yes': allowed: 1 (start over), 0")
    restarted = run_dasi(workspace, *PRETRAIN, DASI_RESTART="1")
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    runs = sorted((workspace / "logs" / "pretrain").iterdir(), key=lambda d: d.stat().st_mtime)
    events = [json.loads(line)["event"] for line in (runs[-1] / "events.jsonl").read_text().splitlines()]
    assert "restart" in events and json.loads((runs[-1] / "summary.json").read_text())["segments"] == 1
    assert "segments" not in json.loads(metrics.read_text())  # history stays out of hashed outputs
