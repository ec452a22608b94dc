import json
import sysconfig
from pathlib import Path

import pytest

from data_gen.sources import HubSource, StdlibSource, chunk_text, iter_documents


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


def test_a_hub_id_without_a_pinned_revision_is_refused_before_any_download():
    src = HubSource(name="fw", type="hub", lang="ko", path="HuggingFaceFW/fineweb-2", config_name="kor_Hang")
    with pytest.raises(ValueError, match=r"seeds.sources\[fw\].revision: pin hub dataset"):
        next(iter_documents(src))
    with pytest.raises(ValueError, match="40-hex"):
        HubSource(name="fw", type="hub", lang="ko", path="HuggingFaceFW/fineweb-2", revision="main")


def test_a_stdlib_file_that_is_not_utf8_stops_with_its_name_and_can_be_excluded():
    bad = "test/encoded_modules/module_iso_8859_1.py"
    if not (Path(sysconfig.get_paths()["stdlib"]) / bad).is_file():
        pytest.skip("this Python ships without its test package")
    src = StdlibSource(name="std", type="python_stdlib", lang="code", include=[bad])
    with pytest.raises(ValueError, match=r"seeds.sources\[std\]: test/encoded_modules/module_iso_8859_1.py "
                                         r"is not UTF-8"):
        list(iter_documents(src))
    src = StdlibSource(name="std", type="python_stdlib", lang="code", include=["test/encoded_modules/*.py"],
                       exclude=["test/encoded_modules/module_iso_8859_1.py",
                                "test/encoded_modules/module_koi8_r.py"])
    origins = {d["origin"].split("#")[0] for d in iter_documents(src)}
    assert origins == {"stdlib:test/encoded_modules/__init__.py"}


def test_the_cluster_profile_reads_code_from_a_real_corpus_not_the_stdlib():
    import yaml

    from dasi.config import validate_section
    from data_gen.seeds import SeedsConfig

    profile = yaml.safe_load(open("configs/kormo-10.8b.yaml", encoding="utf-8"))
    cfg = validate_section("seeds", profile["seeds"], SeedsConfig)
    code = [s for s in cfg.sources if s.lang == "code"]
    assert code and all(s.type == "hub" and s.path == "bigcode/starcoderdata" and s.streaming for s in code)
