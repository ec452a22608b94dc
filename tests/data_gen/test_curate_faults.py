"""curate killed (SIGKILL, the whole process group) after datatrove marked at least one task
complete, then re-run: the same bytes as an uninterrupted run, nothing lost or doubled."""

import json
import os
import sys

import pytest

from dasi.formats import write_parquet
from data_gen.curated import iter_docs
from tests.conftest import REPO
from tests.data_gen.conftest import generated_record, write_generated
from tests.faults import kill_then_finish, seeded_delays, timed_run, tree_digest

pytestmark = pytest.mark.slow


def synthetic(n: int) -> list[dict]:
    text = "한국어 문서 {}번은 헌법과 권리에 관한 이야기를 담고 있다. "
    return [generated_record(lang="ko", request_id=f"r{i}", text=text.format(i) * 3, completion="")
            for i in range(n)]


def test_curate_killed_after_a_task_gives_the_uninterrupted_bytes(tmp_path, natural_docs):
    seeds = tmp_path / "documents.parquet"
    write_parquet(seeds, natural_docs, "documents")
    write_generated(tmp_path / "gen", {"t/shard-00000.parquet": synthetic(20)})
    (tmp_path / "configs").mkdir()
    profile = {"launcher": "local", "curate": {"min_chars": 20, "tasks": 2, "workers": 1}, "evaluate": {},
               "logging": {"logs_dir": str(tmp_path / "logs"), "wandb": False, "tensorboard": False}}
    (tmp_path / "configs" / "k.yaml").write_text(json.dumps(profile))
    (tmp_path / "params.yaml").write_text("profile: k\n")

    def cmd(out):
        return [sys.executable, "-m", "dasi.cli", "curate", "--seeds-file", str(seeds),
                "--generated", str(tmp_path / "gen"), "--out", str(out / "curated"),
                "--stats", str(out / "curate.json"), "--params", str(tmp_path / "params.yaml"),
                "--profiles", str(tmp_path / "configs")]

    def a_task_done() -> bool:
        return any((tmp_path / "run" / "curated" / ".work").glob("*/logs/*/completions/*"))

    env = dict(os.environ, PYTHONPATH=str(REPO))
    wall = timed_run(cmd(tmp_path / "ref"), cwd=tmp_path, env=env)
    # delays counted from the first completed task, up to about the rest of a run
    killed = kill_then_finish(cmd(tmp_path / "run"), seeded_delays(7, 3, 0.0, 0.5 * wall), ready=a_task_done,
                              cwd=tmp_path, env=env)
    assert any(killed)
    ref = tree_digest(tmp_path / "ref" / "curated", tmp_path / "ref" / "curate.json")
    assert tree_digest(tmp_path / "run" / "curated", tmp_path / "run" / "curate.json") == ref
    ids = [d["doc_id"] for d in iter_docs(tmp_path / "run" / "curated", columns=["doc_id"])]
    assert len(ids) == len(set(ids)) > 20  # nothing twice
    stats = json.loads((tmp_path / "run" / "curate.json").read_text())
    assert stats["kept_documents"] == len(ids)
    assert stats["input_by_source"]["synthetic_ko"] == 20  # every input counted once
    assert sum(stats["removed_documents"].values()) + len(ids) == stats["input_documents"]
