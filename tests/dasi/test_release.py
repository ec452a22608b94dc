import json
import subprocess

import yaml

from dasi.model_config import ModelConfig
from dasi.release import ReleaseConfig, run
from tests.conftest import REPO


def test_release_folder_card_and_checksums(tmp_path, tiny_model, runlog):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "eval.json").write_text(json.dumps(
        {"models": {"base": {"tasks": {"kobest_copa": {"acc": 0.5}}, "bpb": {"ko": 3.1}, "path": "x"}}}))
    (metrics / "curate.json").write_text(json.dumps(
        {"kept_by_source": {"kolaw": {"documents": 3, "bytes": 1200}}, "synthetic_ko_failed": 7}))
    lock = tmp_path / "dvc.lock"
    lock.write_text("schema: '2.0'\nstages:\n  pack: {cmd: dasi pack}\n  release: {cmd: dasi release}\n"
                    "  config: {cmd: dasi config}\n")
    model = ModelConfig.model_validate(yaml.safe_load((REPO / "configs/tiny.yaml").read_text())["model"])
    out = tmp_path / "release"
    with runlog("release") as log:
        summary = run(ReleaseConfig(name="test-rel"), model, "tiny", {"base": tiny_model, "sft": tiny_model},
                      [metrics / "eval.json", metrics / "curate.json"], lock, out, log)
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=out, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    listed = (out / "SHA256SUMS").read_text().splitlines()
    assert summary["files"] == len(listed) == sum(1 for p in out.rglob("*") if p.is_file()) - 1
    card = (out / "README.md").read_text()
    assert "| eval.models.base.tasks.kobest_copa.acc | 0.5 |" in card
    assert "`kolaw`: 3 documents, 1,200 bytes" in card and "걸러진 요청 수: 7" in card
    assert "360,768" in card
    # the release's lock is the upstream one: its own entry would hash this very copy
    # ... with its stages in name order (DVC appends new stages' entries at the end)
    assert (out / "dvc.lock").read_text() == ("schema: '2.0'\nstages:\n  config:\n    cmd: dasi config\n"
                                              "  pack:\n    cmd: dasi pack\n")
    assert set(json.loads((out / "results.json").read_text())) == {"eval", "curate"}
    (out / "models/sft/config.json").write_text("{}")  # tampering is caught
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out,
                          capture_output=True).returncode != 0


def test_a_missing_metrics_file_stops_the_release(tmp_path, tiny_model, runlog):
    import pytest

    model = ModelConfig.model_validate(yaml.safe_load((REPO / "configs/tiny.yaml").read_text())["model"])
    with runlog("release") as log, pytest.raises(FileNotFoundError, match="missing.json"):
        run(ReleaseConfig(name="x"), model, "tiny", {"base": tiny_model}, [tmp_path / "missing.json"],
            tmp_path / "dvc.lock", tmp_path / "out", log)
    assert not (tmp_path / "out").exists()
