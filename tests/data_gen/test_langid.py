import hashlib

import pytest
from datatrove.data import Document
from pydantic import ValidationError

from data_gen.langid import MODEL_SHA256, LanguageIDFilter, LidConfig, model_path, predict

KO = "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다."
EN = "The committee reviewed the proposal and decided to publish its findings next spring."


def test_shipped_model_file_is_the_pinned_one():
    assert hashlib.sha256(model_path().read_bytes()).hexdigest() == MODEL_SHA256


def test_predicts_korean_and_english_across_lines():
    lang, score = predict(KO + "\n" + KO)
    assert lang == "ko" and 0.9 < score <= 1.0
    lang, score = predict(EN.replace(" the ", "\nthe "))
    assert lang == "en" and 0.9 < score <= 1.0


def doc(text: str, lang: str, source: str = "kolaw") -> Document:
    return Document(text=text, id=f"{source}-{lang}", metadata={"source": source, "lang": lang})


def test_filter_drops_mislabelled_documents_and_passes_code():
    docs = [doc(KO, "ko"), doc(EN, "ko", "synthetic_ko"), doc(EN, "en", "pydoc"),
            doc("def f(x):\n    return x + 1\n", "code", "stdlib")]
    step = LanguageIDFilter(LidConfig(min_score=0.5))
    kept = list(step.run(iter(docs)))
    assert [d.id for d in kept] == ["kolaw-ko", "pydoc-en", "stdlib-code"]
    assert kept[0].metadata["lid"] == "ko" and kept[0].metadata["lid_score"] > 0.9
    assert "lid" not in kept[2].metadata  # code is not checked
    stats = step.stats.stats
    assert stats["dropped/synthetic_ko"].total == 1 and stats["dropped_lid"].total == 1
    assert "dropped/kolaw" not in stats and stats["total/kolaw"].total == 1


def test_min_score_and_langs_apply():
    mixed = "헌법 개정안 committee proposal"  # predicted ko with a middling score (0.50)
    lang, score = predict(mixed)
    assert lang == "ko" and 0.3 < score < 0.9
    assert LanguageIDFilter(LidConfig(min_score=0.3)).keep(doc(mixed, "ko"))
    assert not LanguageIDFilter(LidConfig(min_score=0.9)).keep(doc(mixed, "ko"))
    en_only = LanguageIDFilter(LidConfig(min_score=0.9, langs=frozenset({"en"})))
    assert en_only.keep(doc(mixed, "ko"))  # ko is not checked by this filter


def test_config_rejects_bad_values():
    with pytest.raises(ValidationError, match="min_score"):
        LidConfig(min_score=1.5)
    with pytest.raises(ValidationError, match="langs"):
        LidConfig(langs=frozenset({"code"}))
