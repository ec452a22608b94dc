"""The Slurm path up to the cluster: the script, its output folder, its requeue on USR1, and
jobs that end badly or come back requeued.

``sbatch``, ``squeue``, ``sacct``, ``srun`` and ``scontrol`` are small scripts put first on PATH: they
stand in for the cluster, and what is tested is our handling of what they print and return (and
the generated batch script's own shell logic, run by bash)."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from dasi.runlog import read_jsonl
from pretrain import launch
from pretrain.signals import flag_file
from pretrain.stage import SlurmJobFailed, _job_failed, run
from pretrain.worker import RecordLog, node_environment
from tests.faults import executable
from tests.pretrain.conftest import runlog, small_cfg


def test_the_script_writes_into_a_folder_dasi_creates(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = launch.dry_run(small_cfg(), Path("job.json"), "slurm")
    assert "#SBATCH --output=logs/slurm/%x-%j.out" in text
    assert "# dasi creates logs/slurm/ before submitting" in text
    assert not Path("logs").exists()  # a dry run writes nothing


def test_the_script_requeues_on_a_signal_before_the_time_limit() -> None:
    text = launch.dry_run(small_cfg(slurm={"signal_seconds": 900}), Path("ck/job.json"), "slurm")
    lines = text.splitlines()
    assert {"#SBATCH --requeue", "#SBATCH --signal=B:USR1@900", "#SBATCH --open-mode=append"} <= set(lines)
    assert "SAVE_REQUEST=ck/save_request" in lines and '  scontrol requeue "$SLURM_JOB_ID"' in lines
    assert lines[-1] == 'exit "$status"'
    once = launch.dry_run(small_cfg(slurm={"requeue": False}), Path("ck/job.json"), "slurm").splitlines()
    assert "#SBATCH --no-requeue" in once and "#SBATCH --signal=B:USR1@600" in once
    assert not any("scontrol requeue" in line for line in once)


def _wait_for(path: Path, timeout: float = 20.0) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert time.time() < end, f"{path} did not appear"
        time.sleep(0.02)


@pytest.mark.parametrize(("usr1", "srun_exit", "requeued"),
                         [(True, 0, True), (False, 0, False), (True, 3, False)])
def test_the_batch_shell_flags_waits_and_requeues(tmp_path, usr1, srun_exit, requeued) -> None:
    """The generated script run by bash: a stale flag is removed before srun starts; USR1 to the
    shell writes the flag and the shell keeps waiting for srun; it requeues its own job only when
    srun then exits 0 with the flag there, and exits with srun's status."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "srun", """
[ -e ck/save_request ] && echo stale > srun.log || echo clean > srun.log
touch srun.started
until [ -e srun.finish ]; do sleep 0.02; done
exit "$SRUN_EXIT"
""")
    executable(bin_dir / "scontrol", """
echo "$*" >> scontrol.log
[ "$1" = show ] && echo node1
exit 0
""")
    (tmp_path / "ck").mkdir()
    flag_file(tmp_path / "ck").touch()  # the last segment's request
    script = tmp_path / "ck" / "pretrain.sbatch"
    script.write_text(launch.slurm_script(small_cfg(), Path("ck/job.json")))
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "node1", "SRUN_EXIT": str(srun_exit)}
    shell = subprocess.Popen(["bash", str(script)], cwd=tmp_path, env=env, stderr=subprocess.PIPE,
                             text=True)
    try:
        _wait_for(tmp_path / "srun.started")
        assert (tmp_path / "srun.log").read_text() == "clean\n"
        assert not flag_file(tmp_path / "ck").exists()
        if usr1:
            shell.send_signal(signal.SIGUSR1)
            _wait_for(flag_file(tmp_path / "ck"))
        time.sleep(0.3)
        assert shell.poll() is None  # still waiting for srun
        (tmp_path / "srun.finish").touch()
        assert shell.wait(timeout=20) == srun_exit
    finally:
        shell.kill()
    calls = (tmp_path / "scontrol.log").read_text().splitlines()
    assert calls == ["show hostnames node1"] + (["requeue 4242"] if requeued else [])
    assert ("USR1, save requested" in shell.stderr.read()) == usr1


@pytest.fixture
def cluster(tmp_path, monkeypatch) -> Path:
    """A fake sbatch: refuses like Slurm when logs/slurm/ is missing, else prints a job id, appends
    one step's metrics to the job's records (the segment's logs) and exits 1, as on TIMEOUT."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "sbatch", """
[ -d logs/slurm ] || { echo "sbatch: error: logs/slurm: no such folder" >&2; exit 9; }
records="$(dirname "${@: -1}")/records.jsonl"
echo 4242
echo '{"kind": "log", "metrics": {"loss": 7.5}, "step": 1}' >> "$records"
echo '{"kind": "event", "name": "resume", "data": {"step": 0}}' >> "$records"
exit 1
""")
    executable(bin_dir / "squeue", 'echo "slurm_load_jobs error: Invalid job id specified" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    return bin_dir


def test_a_timed_out_job_keeps_its_curves_and_says_how_to_resume(
        model_cfg, packed, tmp_path, cluster) -> None:
    executable(cluster / "sacct", 'echo "TIMEOUT"\n')
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


def _states(bin_dir: Path, command: str, *states: str) -> None:
    """A fake ``command`` printing ``states`` one per call, then the last one again and again."""
    (bin_dir / f"{command}.states").write_text("".join(f"{s}\n" for s in states))
    executable(bin_dir / command, f"""
f="{bin_dir}/{command}.states"
state="$(head -n 1 "$f")"
[ "$(wc -l < "$f")" -le 1 ] || sed -i 1d "$f"
[ -n "$state" ] || exit 1  # squeue of a job the controller no longer holds
echo "$state"
""")


def test_the_wait_follows_the_queue_before_accounting(cluster) -> None:
    """squeue knows a requeued job waits while sacct still names its last segment's end."""
    _states(cluster, "squeue", "PENDING", "RUNNING", "")
    _states(cluster, "sacct", "PREEMPTED", "COMPLETED")
    seen: list[str] = []
    sleeps: list[float] = []
    assert launch.final_state("4242", 7, seen.append, sleep=sleeps.append) == "PREEMPTED"
    assert seen == ["PENDING", "RUNNING", "PREEMPTED"] and sleeps == [7, 7]
    assert launch.final_state(None, 7, seen.append, sleep=sleeps.append) == "unknown"


SEGMENTS = [  # segment 0 saved at step 2, logged step 3, was preempted; segment 1 redid step 3
    {"kind": "event", "name": "segment_start", "data": {"segment": 0, "job_id": "4242", "start_step": 0}},
    *({"kind": "log", "metrics": {"loss": 9.0 - s}, "step": s} for s in (1, 2, 3)),
    {"kind": "event", "name": "segment_start", "data": {"segment": 1, "job_id": "4242", "start_step": 2}},
    *({"kind": "log", "metrics": {"loss": 8.5 - s}, "step": s} for s in (3, 4)),
    {"kind": "summary", "metrics": {"steps": 4, "segments": 2}},
]


@pytest.fixture
def requeued_job(cluster, tmp_path) -> Path:
    """A fake sbatch whose job ran two segments on two nodes: it writes their records and node
    files and returns 1 when the first segment ends (sbatch --wait does not follow a requeue)."""
    made = tmp_path / "made"
    for segment, host in ((0, "gpu-a"), (1, "gpu-b")):
        node = made / "nodes" / str(segment) / f"{host}.json"
        node.parent.mkdir(parents=True)
        node.write_text(json.dumps({**node_environment(), "hostname": host}))
    (made / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SEGMENTS))
    executable(cluster / "sbatch", f"""
ck="$(dirname "${{@: -1}}")"
echo 4242
cat {made}/records.jsonl >> "$ck/records.jsonl"
cp -r {made}/nodes "$ck/"
exit 1
""")
    return cluster


def test_a_requeued_job_is_waited_for_and_its_segments_make_one_history(
        model_cfg, packed, tmp_path, requeued_job) -> None:
    _states(requeued_job, "sacct", "REQUEUED", "COMPLETED")
    cfg = small_cfg(train_steps=4, slurm={"poll_seconds": 1})
    (tmp_path / "ck").mkdir()
    flag_file(tmp_path / "ck").touch()  # left by an earlier launch
    with runlog(tmp_path, cfg) as log:
        summary = run(model_cfg, cfg, packed, tmp_path / "ck", log, launcher="slurm")
    assert summary == {"steps": 4, "segments": 2}
    assert not flag_file(tmp_path / "ck").exists()
    metrics = read_jsonl(log.dir / "metrics.jsonl")
    assert [(m["step"], m["loss"]) for m in metrics] == [(1, 8.0), (2, 7.0), (3, 5.5), (4, 4.5)]
    events = read_jsonl(log.dir / "events.jsonl")
    assert [e["state"] for e in events if e["event"] == "slurm_job_state"] == ["REQUEUED", "COMPLETED"]
    (redone,) = (e for e in events if e["event"] == "steps_redone")
    assert (redone["segment"], redone["first"], redone["last"]) == (1, 3, 3)
    nodes = [(e["segment"], e["hostname"]) for e in events if e["event"] == "node_env"]
    assert nodes == [(0, "gpu-a"), (1, "gpu-b")]
    assert json.loads((log.dir / "nodes" / "1" / "gpu-b.json").read_text())["hostname"] == "gpu-b"
    assert json.loads((log.dir / "run.json").read_text())["status"] == "ok"


def test_a_job_that_saved_on_the_signal_and_was_not_requeued_is_not_done(
        model_cfg, packed, tmp_path, requeued_job) -> None:
    executable(requeued_job / "sacct", 'echo "COMPLETED"\n')
    cfg = small_cfg(train_steps=6, slurm={"requeue": False})
    short = r"^slurm job 4242 ended COMPLETED at step 4, short of its steps: saved on a signal, not requeued"
    with pytest.raises(SlurmJobFailed, match=short), runlog(tmp_path, cfg) as log:
        run(model_cfg, cfg, packed, tmp_path / "ck", log, launcher="slurm")
    assert [m["step"] for m in read_jsonl(log.dir / "metrics.jsonl")] == [1, 2, 3, 4]
    failed = [e for e in read_jsonl(log.dir / "events.jsonl") if e["event"] == "slurm_job_failed"]
    assert failed[0]["stopped_at"] == 4 and not (tmp_path / "ck" / "summary.json").exists()
