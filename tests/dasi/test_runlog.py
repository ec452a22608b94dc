import hashlib
import json
import os
import sys

import pytest

from dasi.runlog import LoggingConfig, RunLog, read_jsonl
from tests.conftest import REPO


def test_run_folder_has_every_file(tmp_path):
    (tmp_path / "in.txt").write_text("hello")
    out = tmp_path / "out.txt"
    cfg = LoggingConfig(logs_dir=str(tmp_path / "logs"), wandb=True, tensorboard=True)
    with RunLog("demo", {"a": 1}, inputs=[tmp_path / "in.txt"], outputs=[out], logging=cfg,
                profile="tiny") as log:
        log.log({"loss": 2.5, "lr": 1e-3}, step=1)
        log.log({"loss": 2.0, "lr": 1e-3}, step=2)
        log.event("resume", step=1)
        log.summary({"final_loss": 2.0})
        out.write_text("result")
    d = log.dir
    assert d.parent == tmp_path / "logs" / "demo"
    run = json.loads((d / "run.json").read_text())
    assert run["status"] == "ok" and run["format"] == "dasi.runlog/2" and run["profile"] == "tiny"
    assert json.loads((d / "config.json").read_text()) == {"a": 1}
    env = json.loads((d / "env.json").read_text())
    assert {"python", "packages", "git", "hostname", "accelerator"} <= set(env)
    assert "torch" in env["packages"]
    ins = json.loads((d / "inputs.json").read_text())
    assert ins[str(tmp_path / "in.txt")] == (
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
    assert json.loads((d / "outputs.json").read_text())[str(out)] == {
        "mode": "sha256", "files": 1, "bytes": 6, "sha256": hashlib.sha256(b"result").hexdigest()}
    assert [m["loss"] for m in read_jsonl(d / "metrics.jsonl")] == [2.5, 2.0]
    assert read_jsonl(d / "events.jsonl")[0]["event"] == "resume"
    assert list((d / "tb").glob("events.out.tfevents.*"))
    assert list((d / "wandb").rglob("*.wandb"))  # the offline W&B run stays in the folder


def test_outputs_are_hashed_by_size_when_told(tmp_path):
    """A folder too big to read again at the end (a 10.8B run's checkpoints) is recorded by its
    files' sizes; the mode says so, and a resized file changes the record."""
    out = tmp_path / "ck"
    (out / "iter_1").mkdir(parents=True)
    cfg = LoggingConfig(logs_dir=str(tmp_path / "logs"), wandb=False, tensorboard=False)

    def logged(content: bytes) -> dict:
        (out / "iter_1" / "model.pt").write_bytes(content)
        with RunLog("demo", {}, outputs=[out, tmp_path / "absent"], logging=cfg) as log:
            log.hash_outputs("size")
        return json.loads((log.dir / "outputs.json").read_text())

    first = logged(b"abc")
    assert first[str(tmp_path / "absent")] is None
    rec = first[str(out)]
    assert {k: rec[k] for k in ("mode", "files", "bytes")} == {"mode": "size", "files": 1, "bytes": 3}
    assert rec["sizes_sha256"] == hashlib.sha256(b"iter_1/model.pt\x003\n").hexdigest()
    assert logged(b"xyz")[str(out)] == rec  # same sizes: content is not read
    assert logged(b"abcd")[str(out)]["sizes_sha256"] != rec["sizes_sha256"]


def test_failed_run_is_marked(tmp_path):
    cfg = LoggingConfig(logs_dir=str(tmp_path), wandb=False, tensorboard=False)
    with pytest.raises(RuntimeError):
        with RunLog("demo", {}, logging=cfg) as log:
            raise RuntimeError("boom")
    run = json.loads((log.dir / "run.json").read_text())
    assert run["status"] == "failed" and "boom" in run["error"]
    assert not (log.dir / "outputs.json").exists()


def test_show_compare_and_plot(tmp_path):
    from dasi.logview import compare, plot, show

    dirs = []
    for lr in (0.1, 0.2):
        cfg = LoggingConfig(logs_dir=str(tmp_path / "logs"), wandb=False, tensorboard=False)
        with RunLog("train", {"lr": lr, "steps": 3}, logging=cfg) as log:
            for step in range(1, 4):
                log.log({"loss": 3.0 / step / lr}, step=step)
            log.summary({"final_loss": 1 / lr})
        dirs.append(log.dir)
    assert "status=ok" in show(dirs[0]) and "final_loss: 10.0" in show(dirs[0])
    table = compare(dirs)
    assert "config.lr" in table and "config.steps" not in table  # only what differs
    assert "final_loss" in table
    png = plot(dirs, "loss", tmp_path / "loss.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no 'grad_norm'"):
        plot(dirs, "grad_norm", tmp_path / "x.png")


RUN_FOREVER = """
import sys, time
from dasi.runlog import LoggingConfig, RunLog
with RunLog("probe", {}, logging=LoggingConfig(logs_dir=sys.argv[1], wandb=False, tensorboard=False)):
    print("started", flush=True)
    time.sleep(600)
"""


def start_probe(logs, tmp_path):
    import subprocess

    script = tmp_path / "probe.py"
    script.write_text(RUN_FOREVER)
    proc = subprocess.Popen([sys.executable, str(script), str(logs)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "started"
    return proc


def test_a_killed_run_is_marked_died_by_the_next_run(tmp_path):
    import signal

    logs = tmp_path / "logs"
    proc = start_probe(logs, tmp_path)
    (killed,) = list((logs / "probe").glob("*/run.json"))
    assert json.loads(killed.read_text())["status"] == "running"
    live = start_probe(logs, tmp_path)  # a run still going is not touched
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    quiet = LoggingConfig(logs_dir=str(logs), wandb=False, tensorboard=False)
    with RunLog("probe", {}, logging=quiet) as log:
        pass
    run = json.loads(killed.read_text())
    assert run["status"] == "died" and run["died_noticed_by"] == log.run_id
    events = read_jsonl(log.dir / "events.jsonl")
    assert [e["run_id"] for e in events if e["event"] == "previous_run_died"] == [run["run_id"]]
    statuses = sorted(json.loads(p.read_text())["status"] for p in (logs / "probe").glob("*/run.json"))
    assert statuses == ["died", "ok", "running"]
    # SIGTERM (Slurm's time limit) ends the run with its status written
    live.send_signal(signal.SIGTERM)
    live.wait()
    statuses = sorted(json.loads(p.read_text())["status"] for p in (logs / "probe").glob("*/run.json"))
    assert statuses == ["died", "ok", "terminated"]
