"""curate on real tiny data (konlpy, pydoc, stdlib seeds + generated records) with planted cases:
an exact duplicate, a near-duplicate in another task, an evaluation item inside a training
document, an English answer to a Korean request, spam and PII. One run, several checks."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from dasi.formats import write_parquet
from dasi.splits import heldout_by_hash
from data_gen.curate import CurateConfig, run
from data_gen.curate.quality import quality_steps
from data_gen.curated import curated_shards, iter_docs, read_manifest
from evals.harness import TaskSpec
from tests.conftest import REPO
from tests.data_gen.conftest import generated_record, write_generated

ITEM = {"premise": "The harbour committee approved the lighthouse budget after a long and noisy debate",
        "question": "결과", "alternative_1": "Every fisherman paid a little more tax that winter",
        "alternative_2": "The lighthouse stayed dark for another decade", "label": 0}
KO_OK = "대한민국의 헌법은 국민의 권리와 의무를 정한다. 모든 국민은 법 앞에 평등하다."
PII_LINE = "\n문의: hong@example.com, 010-1234-5678."
SPAM_LINE = "\n지금 가입하면 가입머니 3만원 지급! 먹튀 검증 완료된 안전놀이터에서 바카라 사이트 이용하세요."


def passes_quality(doc: dict, cfg: CurateConfig) -> bool:
    from data_gen.curate.readers import seed_document

    d = seed_document(doc)
    return all(step.filter(d) is True for step in quality_steps(cfg))


def english(docs: list[dict], seed: int, n_words: int) -> str:
    """Sentences of words drawn (seeded) from the vocabulary of ``docs``: text no other
    document shares a long n-gram with."""
    import random

    vocab = sorted({w for d in docs for w in d["text"].split() if w.isalpha() and 3 <= len(w) <= 9})
    rng = random.Random(seed)
    words = [rng.sample(vocab, 11) for _ in range(n_words // 14)]
    return "\n".join(" ".join(["The", *w[:6], "and", "the", *w[6:]]) + "." for w in words)


def halves(a: str, b: str) -> str:
    """The first half of ``a`` and the second of ``b``: a new document, near neither."""
    return a[: len(a) // 2] + b[len(b) // 2:]


def edit(text: str) -> str:
    """Two words changed: a near-duplicate, not an exact one."""
    words = text.split(" ")
    words[len(words) // 3] = "altered"
    words[2 * len(words) // 3] = "changed"
    return " ".join(words)


@pytest.fixture(scope="module")
def curated(tmp_path_factory, natural_docs):
    root = tmp_path_factory.mktemp("curate")
    cfg = CurateConfig(min_chars=20, tasks=2, workers=1)
    pydoc = [d for d in natural_docs if d["source"] == "pydoc" and passes_quality(d, cfg)]
    # a training document of its own words (a held-out one's near-duplicate would also go as
    # contaminated), and its copy with two words changed in a generated shard (another task)
    base = dict(pydoc[0], doc_id="near-0", text=english(pydoc, seed=1, n_words=240))
    # the eval item inside a training document built from two other documents' halves
    host = pydoc[1:3]
    item = ". ".join(ITEM[k] for k in ("premise", "alternative_1", "alternative_2"))
    contaminated = halves(host[0]["text"], host[1]["text"]).replace("\n", f"\n\n{item}.\n\n", 1)
    kolaw = [d for d in natural_docs if d["source"] == "kolaw" and passes_quality(d, cfg)]
    mixed = [t for a, b in zip(kolaw, kolaw[1:], strict=False)
             if passes_quality(dict(a, text=(t := halves(b["text"], a["text"]))), cfg)]
    docs = natural_docs + [base, dict(natural_docs[0], doc_id="dup-0"),  # exact duplicate, same task
                           dict(natural_docs[1], doc_id="spam-0", text=natural_docs[1]["text"] + SPAM_LINE),
                           dict(kolaw[0], doc_id="pii-0", text=mixed[2] + PII_LINE)]
    seeds = root / "documents.parquet"
    write_parquet(seeds, docs, "documents")  # one row group: task 0
    g = generated_record(seed_doc_id="kolaw-000000", finish_reason="length")
    rows_a = [dict(g, request_id="near", lang="en", text=edit(base["text"])),  # task 1
              dict(g, request_id="contaminated", lang="en", text=contaminated),
              dict(g, request_id="ko-ok", lang="ko", text=mixed[0]),
              dict(g, request_id="ko-english", lang="ko", text="The teacher answered in English here. " * 3),
              dict(g, request_id="ko-short", lang="ko", text="짧은 글"),
              dict(g, request_id="sft-ko", lang="ko", purpose="sft", text=KO_OK)]
    write_generated(root / "gen", {"t/shard-00000.parquet": [dict(r, completion=r["text"]) for r in rows_a]})
    task_file = root / "copa.jsonl"
    task_file.write_text(json.dumps(ITEM, ensure_ascii=False) + "\n", encoding="utf-8")
    tasks = [TaskSpec(name="copa_ko_mini", source="local", format="kobest_copa", origin="test item",
                      local_file=str(task_file))]
    from dasi.runlog import LoggingConfig, RunLog

    out, stats_file = root / "curated", root / "curate.json"
    with RunLog("curate", {}, logging=LoggingConfig(logs_dir=str(root / "logs"), wandb=False,
                                                     tensorboard=False)) as log:
        stats = run(cfg, seeds, root / "gen", out, stats_file, log, eval_tasks=tasks)
    return {"stats": stats, "file": stats_file, "out": out, "docs": docs, "base": base}


def test_stats_count_every_filter_per_source(curated):
    stats, kept = curated["stats"], list(iter_docs(curated["out"]))
    assert stats == json.loads(curated["file"].read_text())
    assert list(stats["removed_by_filter"]) == [
        "too_short", "too_long", "lid", "low_hangul", "gopher_quality", "gopher_repetition",
        "fineweb_quality", "spam", "duplicate", "near_duplicate", "decontaminated"]
    assert stats["input_documents"] == len(curated["docs"]) + 5  # sft rows are not documents
    kept_by_source = sum(v["documents"] for v in stats["kept_by_source"].values())
    assert stats["kept_documents"] == len(kept) == kept_by_source
    assert sum(stats["removed_documents"].values()) + len(kept) == stats["input_documents"]
    removed = stats["removed_by_filter"]
    assert removed["lid"]["synthetic_ko"] == {"documents": 1}  # the English answer
    assert removed["too_short"]["synthetic_ko"] == {"documents": 1}
    assert removed["spam"] == {"kolaw": {"documents": 1}}
    assert removed["duplicate"] == {"kolaw": {"documents": 1}}
    assert stats["pii_replaced"]["email"]["kolaw"] >= 1 and stats["pii_replaced"]["phone"]["kolaw"] >= 1
    assert stats["synthetic_ko_requests"] == 3 and stats["synthetic_ko_kept"] == 1, {
        f: v for f, v in removed.items() if "synthetic_ko" in v}
    # the word-level filters saw real documents and dropped some, per source
    assert sum(stats["removed_documents"][f] for f in ("gopher_quality", "gopher_repetition",
                                                       "fineweb_quality")) > 0
    by_id = {d["doc_id"]: d for d in kept}
    assert "<EMAIL>" in by_id["pii-0"]["text"] and "hong@example.com" not in by_id["pii-0"]["text"]
    assert json.loads(by_id["syn-ko-ok"]["provenance"])["teacher_id"] == "teacher"
    assert all(d["split"] == ("heldout" if heldout_by_hash(d["doc_id"], 0.1) else "train") for d in kept)


def test_minhash_removes_a_near_duplicate_from_another_task(curated):
    lines = (curated["out"] / "reports" / "near_duplicates.jsonl").read_text().splitlines()
    removed = {json.loads(x)["doc_id"] for x in lines}
    pair = {curated["base"]["doc_id"], "syn-near"}
    assert len(removed & pair) == 1  # one of the two stays
    kept = {d["doc_id"] for d in iter_docs(curated["out"], columns=["doc_id"])}
    assert len(kept & pair) == 1
    stats = curated["stats"]
    assert stats["near_duplicate_clusters"] >= 1
    assert stats["removed_documents"]["near_duplicate"] == len(removed)
    # the two were read by different tasks, seeds by task 0 and the generated shard by task 1:
    # the one kept is in its task's shard
    shards = [set(pq.read_table(p, columns=["doc_id"]).column("doc_id").to_pylist())
              for p in curated_shards(curated["out"])]
    assert (kept & pair) <= (shards[0] if curated["base"]["doc_id"] in kept else shards[1])


def test_decontamination_removes_a_planted_evaluation_item(curated):
    report = [json.loads(x) for x in
              (curated["out"] / "reports" / "decontamination.jsonl").read_text().splitlines()]
    assert {"doc_id": "syn-contaminated", "source": "synthetic_en",
            "matched_item": "copa_ko_mini/0"} in report
    kept = {d["doc_id"] for d in iter_docs(curated["out"], columns=["doc_id"])}
    assert "syn-contaminated" not in kept
    assert curated["stats"]["removed_by_filter"]["decontaminated"]["synthetic_en"]["documents"] >= 1


def test_output_is_sharded_and_complete(curated):
    out = curated["out"]
    manifest = read_manifest(out)
    assert [s["file"] for s in manifest["shards"]] == ["documents/00000.parquet", "documents/00001.parquet"]
    assert manifest["rows"] == curated["stats"]["kept_documents"]
    assert manifest["rows_by_split"] == curated["stats"]["split_by_lang"]
    assert not (out / ".work").exists()  # scratch removed on success


def test_slurm_dry_run_prints_each_pass_array(tmp_path, natural_docs):
    seeds = tmp_path / "documents.parquet"
    write_parquet(seeds, natural_docs[:3], "documents")
    write_generated(tmp_path / "gen", {"t/shard-00000.parquet": []})
    (tmp_path / "configs").mkdir()
    profile = {"launcher": "local", "curate": {"tasks": 8, "slurm": {"partition": "cpu", "time": "02:00:00"}},
               "evaluate": {}, "logging": {"logs_dir": str(tmp_path / "logs"), "wandb": False,
                                            "tensorboard": False}}
    (tmp_path / "configs" / "k.yaml").write_text(json.dumps(profile))
    (tmp_path / "params.yaml").write_text("profile: k\n")
    done = subprocess.run(
        [sys.executable, "-m", "dasi.cli", "curate", "--seeds-file", str(seeds), "--generated",
         str(tmp_path / "gen"), "--out", str(tmp_path / "curated"), "--launcher", "slurm", "--dry-run",
         "--params", str(tmp_path / "params.yaml"), "--profiles", str(tmp_path / "configs")],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    for name, tasks in [("filter", 8), ("exact-find", 1), ("minhash-sig", 8), ("minhash-buckets", 14),
                        ("minhash-cluster", 1), ("decontam-index", 1), ("final", 8)]:
        assert f"# pass {name}: {tasks} tasks" in text
        assert f"#SBATCH --job-name=dasi-curate-{name}" in text
    assert "#SBATCH --partition=cpu" in text and "--array=0-7" in text and "--array=0-13" in text
    assert not (tmp_path / "curated").exists() and not (tmp_path / "logs").exists()  # nothing ran


def test_stale_work_of_another_fingerprint_is_removed_and_logged(tmp_path):
    from data_gen.curate.pipeline import WORK_DIR, prepare_work
    from tests.data_gen.conftest import EventLog

    stale = tmp_path / WORK_DIR / "0123456789abcdef"
    (stale / "logs").mkdir(parents=True)
    (stale / "logs" / "x").write_text("old")
    log = EventLog()
    work = prepare_work(tmp_path, {"config": "a"}, log)
    assert not stale.exists() and work.is_dir()
    assert log.events[0][0] == "discarded_stale_work" and log.events[0][1]["files"] == 1
    (work / "logs").mkdir()
    log = EventLog()
    assert prepare_work(tmp_path, {"config": "a"}, log) == work  # same fingerprint: resumed
    assert [e for e, _ in log.events] == ["resume"]


def test_files_of_an_older_layout_leave_the_output_folder_with_an_event(tmp_path):
    from data_gen.curate.pipeline import WORK_DIR, remove_strays
    from tests.data_gen.conftest import EventLog

    for name in ("documents", "reports", WORK_DIR):
        (tmp_path / name).mkdir()
    (tmp_path / "_manifest.json").write_text("{}")
    (tmp_path / "documents.parquet").write_text("curated/1 as one file")  # the layout before shards
    (tmp_path / "old").mkdir()
    log = EventLog()
    remove_strays(tmp_path, log)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["documents", "reports", WORK_DIR,
                                                                 "_manifest.json"])
    assert log.events == [("removed_stray_outputs", {"folder": str(tmp_path),
                                                     "names": ["documents.parquet", "old"]})]
