import json

from dasi.formats import read_parquet, write_parquet
from data_gen.curate import CurateConfig, run
from tests.data_gen.conftest import generated_record, write_generated


def test_curate_counts_every_drop_and_keeps_provenance(tmp_path, natural_docs, runlog):
    seeds = tmp_path / "documents.parquet"
    docs = natural_docs + [dict(natural_docs[0], doc_id="dup-0")]  # an exact duplicate
    write_parquet(seeds, docs, "documents")
    gen = tmp_path / "generated"
    base = generated_record(seed_doc_id="kolaw-000000", finish_reason="length")
    rows = [
        dict(base, request_id="ko-ok", lang="ko",
             text="대한민국의 헌법은 국민의 권리와 의무를 정한다. 모든 국민은 법 앞에 평등하다."),
        dict(base, request_id="ko-english", lang="ko", text="The teacher answered in English here. " * 3),
        dict(base, request_id="ko-short", lang="ko", text="짧은 글"),
        dict(base, request_id="en-ok", lang="en", text="A short story about a cat who learns to read."),
        dict(base, request_id="sft-ko", lang="ko", purpose="sft", text="헌법은 나라의 기본 법입니다. " * 3),
    ]
    rows = [dict(r, completion=r["text"]) for r in rows]
    write_generated(gen, {"t/shard-00000.parquet": rows})
    out, stats_file = tmp_path / "curated.parquet", tmp_path / "stats.json"
    with runlog("curate") as log:
        stats = run(CurateConfig(min_chars=20), seeds, gen, out, stats_file, log)
    kept = read_parquet(out, "curated").to_pylist()
    assert stats == json.loads(stats_file.read_text())
    assert stats["input_documents"] == len(docs) + 4
    assert stats["kept_documents"] == len(kept)
    assert stats["removed_documents"]["duplicate"] == 1
    assert stats["removed_by_filter"]["low_hangul"]["synthetic_ko"]["documents"] == 1
    assert stats["removed_by_filter"]["too_short"]["synthetic_ko"]["documents"] == 1
    assert stats["synthetic_ko_requests"] == 3 and stats["synthetic_ko_failed"] == 2  # sft rows are not docs
    assert stats["synthetic_ko_kept"] == 1 and stats["synthetic_ko_kept_fraction"] == 1 / 3
    removed = sum(stats["removed_documents"].values())
    assert removed + stats["kept_documents"] == stats["input_documents"]
    syn = {d["doc_id"]: d for d in kept if d["kind"] == "synthetic"}
    assert set(syn) == {"syn-ko-ok", "syn-en-ok"}
    assert json.loads(syn["syn-ko-ok"]["provenance"])["teacher_id"] == "teacher"
    assert {d["split"] for d in kept} == {"train", "heldout"}
