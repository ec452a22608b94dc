"""The transformers engine with the real SmolLM2-135M-Instruct teacher, generation shards,
provenance and resume."""

import json

import pyarrow.parquet as pq
import pytest

from dasi.formats import read_parquet, write_parquet
from dasi.provenance import sha256_file
from dasi.runlog import read_jsonl
from data_gen.engines import SamplingConfig
from data_gen.generate import GenerateConfig, run
from tests.data_gen.conftest import TEACHER

pytestmark = pytest.mark.slow


class InterruptOnCall:
    """The real engine, with a Ctrl-C arriving during its ``call``-th generate call."""

    def __init__(self, engine, call: int) -> None:
        self.engine, self.call, self.calls = engine, call, 0
        self.name, self.version = engine.name, engine.version

    def generate(self, prompts, sampling, seed):
        self.calls += 1
        if self.calls == self.call:
            raise KeyboardInterrupt
        return self.engine.generate(prompts, sampling, seed)


def requests_file(tmp_path, n=3):
    rows = [{"request_id": f"r{i}", "lang": "en", "style": "qa", "template_id": "qa-en",
             "template_version": 1, "template_hash": "h" * 64, "audience": "students",
             "topic": "lists", "seed_doc_id": f"d{i}",
             "prompt": f"Name {i + 2} colours of the rainbow."} for i in range(n)]
    path = tmp_path / "requests.parquet"
    write_parquet(path, rows, "requests")
    return path


def cfg(**sampling) -> GenerateConfig:
    s = {"max_new_tokens": 8, "temperature": 0.7, "seed": 5, **sampling}
    return GenerateConfig(engine="transformers", teacher=TEACHER, sampling=SamplingConfig(**s),
                          batch_size=2, shard_size=2)


def test_engine_generates_seeded_text(engine):
    s = SamplingConfig(max_new_tokens=6, temperature=0.7)
    a = engine.generate(["Say hello.", "Count to three."], s, seed=1)
    b = engine.generate(["Say hello.", "Count to three."], s, seed=1)
    assert a == b
    assert all(c.text and 0 < c.completion_tokens <= 6 and c.prompt_tokens > 5 for c in a)
    assert {c.finish_reason for c in a} <= {"stop", "length"}


def test_shards_carry_provenance_and_resume_without_duplicates(tmp_path, engine, runlog):
    req = requests_file(tmp_path)
    out = tmp_path / "gen"
    with runlog("generate") as log:
        summary = run(cfg(), req, out, log, engine=engine)
    assert summary["records"] == 3
    first = read_parquet(sorted(out.glob("shard-*.parquet")), "generated").to_pylist()
    assert [r["request_id"] for r in first] == ["r0", "r1", "r2"]
    r = first[0]
    assert r["teacher_file_hash"] == sha256_file(TEACHER.weights_file())
    assert r["engine"] == "transformers" and r["engine_version"]
    assert json.loads(r["sampling"])["max_new_tokens"] == 8
    assert r["template_hash"] == "h" * 64 and r["seed_doc_id"] == "d0"
    assert r["completion_tokens"] > 0 and r["finish_reason"] in ("stop", "length")
    manifest = json.loads((out / "_manifest.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [2, 1]

    # An interrupted run (Ctrl-C while the second shard is generated) resumes: the rerun redoes
    # only that shard, and the seeding makes it identical to the uninterrupted run.
    out2 = tmp_path / "gen2"
    with pytest.raises(KeyboardInterrupt):
        with runlog("generate") as log_a:
            run(cfg(), req, out2, log_a, engine=InterruptOnCall(engine, call=2))
    assert sorted(p.name for p in out2.glob("shard-*")) == ["shard-00000.parquet"]
    shard0_mtime = (out2 / "shard-00000.parquet").stat().st_mtime_ns
    with runlog("generate") as log2:
        run(cfg(), req, out2, log2, engine=engine)
    assert (out2 / "shard-00000.parquet").stat().st_mtime_ns == shard0_mtime
    assert read_parquet(sorted(out2.glob("shard-*.parquet")), "generated").to_pylist() == first
    events = read_jsonl(log2.dir / "events.jsonl")
    assert events[0]["event"] == "resume" and events[0]["shards_done"] == 1
    assert len(read_jsonl(log2.dir / "metrics.jsonl")) == 1  # one batch regenerated

    # A finished run is redone, not silently reused, when the stage runs again.
    with runlog("generate") as log_b:
        run(cfg(), req, out2, log_b, engine=engine)
    assert read_jsonl(log_b.dir / "events.jsonl")[0]["event"] == "redo_finished_output"
    assert len(read_jsonl(log_b.dir / "metrics.jsonl")) == 2

    # Another config must not reuse stale shards.
    with runlog("generate") as log3:
        run(cfg(max_new_tokens=4), req, out, log3, engine=engine)
    assert read_jsonl(log3.dir / "events.jsonl")[0]["event"] == "clear_stale_output"
    assert all(json.loads(r["sampling"])["max_new_tokens"] == 4
               for r in pq.read_table(out / "shard-00000.parquet").to_pylist())
