"""The signal-triggered save, the segments of a requeued job stitched into one history, and each
node's environment record: in-process, one rank, real training on the tiny packed data."""

import json
from pathlib import Path

import pytest

from dasi.runlog import read_jsonl
from pretrain import checkpoint as ckpt
from pretrain import worker
from pretrain.signals import SaveRequest, flag_file
from pretrain.worker import RecordLog, read_records, replay, replay_nodes, stitch, write_job
from tests.pretrain.conftest import runlog, small_cfg


def test_save_request_is_rank_0s_flag_broadcast_and_cleared(tmp_path) -> None:
    from pretrain.model import distributed

    request = SaveRequest(tmp_path)
    assert not request.requested()  # no process group: the file alone
    with distributed(1):
        assert not request.requested()
        flag_file(tmp_path).touch()
        assert request.requested()
        request.clear()
        assert not request.requested() and not flag_file(tmp_path).exists()
    request.clear()  # nothing to clear is fine


def _log(step: int, loss: float) -> dict:
    return {"kind": "log", "metrics": {"loss": loss}, "step": step}


def _segment(n: int, start: int) -> dict:
    return {"kind": "event", "name": "segment_start", "data": {"segment": n, "start_step": start}}


def test_stitched_segments_keep_the_redone_steps_of_the_later_one() -> None:
    records = [_segment(0, 0), _log(1, 9.0), _log(2, 8.0), _log(3, 7.5), _log(4, 7.2),
               {"kind": "summary", "metrics": {"steps": 4}},
               _segment(1, 2), _log(3, 7.4), _log(4, 7.1), _log(5, 6.9),
               {"kind": "event", "name": "signal_save", "data": {"step": 5}},
               {"kind": "summary", "metrics": {"steps": 5}},
               _segment(2, 5), _log(6, 6.5), {"kind": "summary", "metrics": {"steps": 6}}]
    out = stitch(records)
    logs = [(r["step"], r["metrics"]["loss"]) for r in out if r["kind"] == "log"]
    assert logs == [(1, 9.0), (2, 8.0), (3, 7.4), (4, 7.1), (5, 6.9), (6, 6.5)]
    redone = [r["data"] for r in out if r["kind"] == "event" and r["name"] == "steps_redone"]
    assert redone == [{"segment": 1, "resumed_at": 2, "first": 3, "last": 4, "records_replaced": 2}]
    assert [r["metrics"] for r in out if r["kind"] == "summary"] == [{"steps": 6}]
    assert [r["data"]["segment"] for r in out if r.get("name") == "segment_start"] == [0, 1, 2]


def test_a_line_cut_off_by_a_kill_is_ended_by_the_next_segment(tmp_path) -> None:
    path = tmp_path / "records.jsonl"
    RecordLog(path).log({"loss": 9.0}, step=1)
    with open(path, "a") as f:
        f.write('{"kind": "log", "metrics": {"lo')  # the kill landed mid-write
    RecordLog(path).begin_segment(segment=1, start_step=1)
    records, bad = read_records(path)
    assert bad == 1 and [r["kind"] for r in records] == ["log", "event"]
    with runlog(tmp_path, small_cfg()) as log:
        replay(path, log)
    # (the run log's own events, e.g. env_differs_from_lock in a dev venv, are not the replay's)
    events = [e for e in read_jsonl(log.dir / "events.jsonl") if e["event"] in ("records_unreadable",
                                                                                 "segment_start")]
    assert events[0]["event"] == "records_unreadable" and events[0]["lines"] == 1
    assert events[1]["event"] == "segment_start" and events[1]["segment"] == 1
    assert [m["step"] for m in read_jsonl(log.dir / "metrics.jsonl")] == [1]


def test_the_node_environment_is_written_and_copied_into_the_run_log(tmp_path) -> None:
    path = worker.write_node_env(tmp_path / "ck", 3)
    env = json.loads(path.read_text())
    assert path == tmp_path / "ck" / "nodes" / "3" / f"{env['hostname']}.json"
    assert env["gpus"] == [] and env["nccl"] is None  # this machine has no CUDA device
    assert env["packages"]["torch"] and env["packages"]["megatron-core"]
    assert "differs" in env["lock"] or "error" in env["lock"]  # checked against the lock as env.json is
    assert {"SLURM_JOB_ID", "SLURM_RESTART_COUNT"} <= set(env["slurm"])
    with runlog(tmp_path, small_cfg()) as log:
        copies = replay_nodes(tmp_path / "ck", log, log.dir / "nodes")
    assert copies == [log.dir / "nodes" / "3" / path.name] and copies[0].read_text() == path.read_text()
    (event,) = [e for e in read_jsonl(log.dir / "events.jsonl") if e["event"] == "node_env"]
    assert event["segment"] == 3 and event["hostname"] == env["hostname"]
    assert event["torch"] == env["packages"]["torch"] and event["file"] == str(copies[0])


@pytest.fixture
def job(model_cfg, packed, tmp_path) -> Path:
    cfg = small_cfg(train_steps=4, save_interval=4, eval_interval=2)
    (tmp_path / "ck").mkdir()
    return write_job(tmp_path / "ck" / "job.json", model_cfg, cfg, packed, tmp_path / "ck",
                     tmp_path / "ck" / "records.jsonl")


def test_a_save_request_saves_at_that_step_and_the_next_segment_resumes(job, tmp_path, monkeypatch) -> None:
    ck = tmp_path / "ck"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    flag_file(ck).touch()  # USR1 arrived: the batch shell's trap wrote the flag
    worker.main(["--job", str(job)])
    assert ckpt.latest_step(ck) == 1  # saved at the first step's end, not at save_interval 4
    ckpt.verify(ckpt.iter_dir(ck, 1))
    assert flag_file(ck).exists()  # the batch shell requeues the job when it sees it
    flag_file(ck).unlink()  # the requeued job's shell clears it before the next segment
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    worker.main(["--job", str(job)])
    assert ckpt.latest_step(ck) == 4
    flag_file(ck).touch()  # USR1 at the last step: the run is done, the job must not come back
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    worker.main(["--job", str(job)])
    assert ckpt.latest_step(ck) == 4 and not flag_file(ck).exists()
    records, _ = read_records(ck / "records.jsonl")
    starts = [r["data"] for r in records if r.get("name") == "segment_start"]
    assert [(s["segment"], s["job_id"], s["restart_count"], s["start_step"]) for s in starts] == \
        [(0, "4242", 0, 0), (1, "4242", 1, 1), (2, "4242", 2, 4)]
    saves = [r["data"]["step"] for r in records if r.get("name") == "signal_save"]
    assert saves == [1]
    with runlog(tmp_path, small_cfg()) as log:
        summary = replay(ck / "records.jsonl", log)
    assert summary["steps"] == 4 and summary["segments"] == 2
    assert [m["step"] for m in read_jsonl(log.dir / "metrics.jsonl")] == [1, 2, 3, 4]
    host = starts[0]["nodes"]
    assert sorted(p.relative_to(ck).as_posix() for p in (ck / "nodes").rglob("*.json")) == \
        [f"nodes/0/{host}.json", f"nodes/1/{host}.json", f"nodes/2/{host}.json"]
