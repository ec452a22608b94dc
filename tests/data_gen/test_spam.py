import json
from pathlib import Path

import pytest
from datatrove.data import Document
from pydantic import ValidationError

from data_gen.sources import KonlpySource, iter_documents
from data_gen.spam import SpamConfig, SpamFilter, load_terms, spam_hits

REPO = Path(__file__).resolve().parents[2]
TERMS_FILE = REPO / "configs/spam/ko-v1.txt"
AD = "★토토사이트 추천★ 먹튀검증 완료된 안전놀이터! 가입머니 지급, 문의는 텔레그램으로."


def test_shipped_list_is_versioned_and_sized():
    version, terms = load_terms(TERMS_FILE)
    assert version == 1 and 40 <= len(terms) <= 80
    assert all(len(t.replace(" ", "")) >= 3 for t in terms)  # no short terms that hide inside words


def test_hits_count_distinct_terms_ignoring_width_case_and_spacing():
    _, terms = load_terms(TERMS_FILE)
    assert spam_hits(AD, terms) == 4
    assert spam_hits(AD + AD, terms) == 4  # distinct, not occurrences
    # a space in a term matches none or several; a term without one needs the text without one
    assert spam_hits("토토사이트, 토토  사이트", terms) == 1
    assert spam_hits("스포츠토토추천", terms) == 1
    assert spam_hits("키스방 후기", terms) == 1 and spam_hits("키스 방법", terms) == 0
    assert spam_hits("ＯＮＬＩＮＥ 카지노사이트", terms) == 1
    assert spam_hits("아이들과 놀이터에서 토토와 놀았다. 카지노 산업 통계.", terms) == 0


@pytest.mark.parametrize("corpus", ["kolaw", "kobill"])
def test_no_hits_on_real_korean_seed_texts(corpus):
    _, terms = load_terms(TERMS_FILE)
    docs = list(iter_documents(KonlpySource(type="konlpy", name=corpus, lang="ko", corpus=corpus)))
    assert docs
    assert [d["doc_id"] for d in docs if spam_hits(d["text"], terms)] == []


def test_no_hits_on_evaluation_items():
    _, terms = load_terms(TERMS_FILE)
    for line in (REPO / "evals/data/copa_ko_mini.jsonl").read_text(encoding="utf-8").splitlines():
        assert spam_hits(" ".join(str(v) for v in json.loads(line).values()), terms) == 0


def doc(text: str, lang: str, source: str) -> Document:
    return Document(text=text, id=source, metadata={"source": source, "lang": lang})


def test_filter_drops_spam_per_source_and_skips_code():
    step = SpamFilter(SpamConfig(terms_file=str(TERMS_FILE), min_hits=2))
    docs = [doc(AD, "ko", "web_ko"), doc("바카라사이트 하나만 언급한 기사", "ko", "news"),
            doc("대한민국은 민주공화국이다.", "ko", "kolaw"), doc(f"BLOCK = {AD!r}", "code", "stdlib")]
    kept = list(step.run(iter(docs)))
    assert [d.id for d in kept] == ["news", "kolaw", "stdlib"]
    assert docs[0].metadata["spam_hits"] == 4 and docs[0].metadata["spam_list_version"] == 1
    assert "v1" in step.stats.name
    stats = step.stats.stats
    assert stats["dropped/web_ko"].total == 1 and stats["dropped_spam"].total == 1
    assert "total/stdlib" in stats and "dropped/stdlib" not in stats
    assert not SpamFilter(SpamConfig(terms_file=str(TERMS_FILE), min_hits=1)).keep(docs[1])


def test_list_without_version_or_bad_config_is_refused(tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_text("바카라사이트\n", encoding="utf-8")
    with pytest.raises(ValueError, match="version"):
        load_terms(bad)
    with pytest.raises(ValidationError, match="min_hits"):
        SpamConfig(min_hits=0)
