"""The Slurm path up to the cluster: the script, its output folder, and a job that ends badly.

``sbatch`` and ``sacct`` are small scripts put first on PATH: they stand in for the cluster, and
what is tested is our handling of what they print and return."""

import json
import os
import stat
from pathlib import Path

import pytest

from dasi.runlog import read_jsonl
from pretrain import launch
from pretrain.stage import SlurmJobFailed, _job_failed, run
from pretrain.worker import RecordLog
from tests.pretrain.conftest import runlog, small_cfg


def _executable(path: Path, text: str) -> None:
    path.write_text("#!/bin/bash\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_the_script_writes_into_a_folder_dasi_creates(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = launch.dry_run(small_cfg(), Path("job.json"), "slurm")
    assert "#SBATCH --output=logs/slurm/%x-%j.out" in text
    assert "# dasi creates logs/slurm/ before submitting" in text
    assert not Path("logs").exists()  # a dry run writes nothing


@pytest.fixture
def cluster(tmp_path, monkeypatch) -> Path:
    """A fake sbatch: refuses like Slurm when logs/slurm/ is missing, else prints a job id, appends
    one step's metrics to the job's records (the segment's logs) and exits 1, as on TIMEOUT."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "sbatch", """
[ -d logs/slurm ] || { echo "sbatch: error: logs/slurm: no such folder" >&2; exit 9; }
records="$(dirname "${@: -1}")/records.jsonl"
echo 4242
echo '{"kind": "log", "metrics": {"loss": 7.5}, "step": 1}' >> "$records"
echo '{"kind": "event", "name": "resume", "data": {"step": 0}}' >> "$records"
exit 1
""")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    return bin_dir


def test_a_timed_out_job_keeps_its_curves_and_says_how_to_resume(
        model_cfg, packed, tmp_path, cluster) -> None:
    _executable(cluster / "sacct", 'echo "TIMEOUT"\n')
    cfg = small_cfg()
    with pytest.raises(SlurmJobFailed) as failed, runlog(tmp_path, cfg) as log:
        run(model_cfg, cfg, packed, tmp_path / "ck", log, launcher="slurm")
    assert str(failed.value) == (
        "slurm job 4242 ended TIMEOUT (sbatch exit 1; output logs/slurm/dasi-pretrain-4242.out); its logs "
        "are in the run log; no checkpoint was saved: resubmitting starts from step 0")
    assert (tmp_path / "logs" / "slurm").is_dir()
    assert read_jsonl(log.dir / "metrics.jsonl")[0]["loss"] == 7.5  # replayed before the error
    events = {e["event"]: e for e in read_jsonl(log.dir / "events.jsonl")}
    assert "resume" in events and events["slurm_job_failed"]["state"] == "TIMEOUT"
    assert json.loads((log.dir / "run.json").read_text())["status"] == "failed"


def test_a_saved_checkpoint_is_named_and_an_unknown_state_said(tmp_path, cluster, monkeypatch) -> None:
    ck = tmp_path / "ck"
    (ck / "iter_0000003").mkdir(parents=True)  # what the job saved before its time ran out
    (ck / "latest").write_text("3\n")
    monkeypatch.setenv("PATH", str(cluster))  # no sacct
    error = _job_failed(small_cfg(), ck, "4242", 1, RecordLog(tmp_path / "records.jsonl"))
    assert str(error).startswith("slurm job 4242 ended unknown (sbatch exit 1;")
    assert str(error).endswith(f"resubmitting resumes from {ck}/latest (step 3)")
    assert read_jsonl(tmp_path / "records.jsonl")[0]["data"]["latest_step"] == 3
