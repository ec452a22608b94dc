import json

from data_gen.sources import HubSource, chunk_text, iter_documents


def test_chunks_respect_the_limit_and_keep_all_text():
    text = "\n".join(f"line {i} " + "가" * (i % 50) for i in range(200))
    chunks = chunk_text(text, 300)
    assert all(len(c) <= 300 for c in chunks)
    assert "".join(c.replace("\n", "") for c in chunks) == text.replace("\n", "")


def test_konlpy_documents_are_korean(natural_docs):
    ko = [d for d in natural_docs if d["source"] == "kolaw"]
    assert len(ko) >= 20
    assert ko[0]["text"].startswith("대한민국헌법")
    assert all(d["n_chars"] == len(d["text"]) <= 800 for d in ko)
    assert len({d["doc_id"] for d in natural_docs}) == len(natural_docs)


def test_hub_source_reads_a_local_dataset_through_datasets(tmp_path):
    # The same datasets.load_dataset path a hub id takes, pointed at local JSON files.
    rows = [{"body": f"문서 {i}: 한국어 본문입니다."} for i in range(5)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    src = HubSource(name="local", type="hub", lang="ko", path="json",
                    data_files=[str(tmp_path / "train.jsonl")], text_field="body", max_docs=3)
    docs = list(iter_documents(src))
    assert [d["text"] for d in docs] == [r["body"] for r in rows[:3]]
    assert docs[0]["origin"].startswith("hub:json/train/0")


def test_hub_source_reads_a_local_dataset_folder(tmp_path):
    (tmp_path / "data.jsonl").write_text('{"text": "hello world from a folder"}\n')
    src = HubSource(name="folder", type="hub", lang="en", path=str(tmp_path))
    assert [d["text"] for d in iter_documents(src)] == ["hello world from a folder"]
