from data_gen.curate import CurateConfig, assign_splits, first_failure
from data_gen.filters import duplicate_line_fraction, hangul_ratio, normalized_hash, top_ngram_fraction


def test_hangul_ratio_counts_letters_only():
    assert hangul_ratio("대한민국 123 !!") == 1.0
    assert hangul_ratio("대한 ab") == 0.5
    assert hangul_ratio("1234") == 0.0


def test_repetition_measures():
    assert duplicate_line_fraction("a\nb\na\na") == 0.5
    assert top_ngram_fraction("the cat sat " * 10, 3) > 0.9
    assert top_ngram_fraction("one two three four five six", 3) == 0.0


def test_dedup_hash_ignores_case_width_and_spacing():
    assert normalized_hash("Hello   World") == normalized_hash("hello world\n")
    assert normalized_hash("ＡＢＣ") == normalized_hash("abc")


def test_first_failure_in_order():
    cfg = CurateConfig(min_chars=10)
    assert first_failure({"text": "짧다", "lang": "ko"}, cfg) == "too_short"
    assert first_failure({"text": "This is English text, not Korean.", "lang": "ko"}, cfg) == "low_hangul"
    assert first_failure({"text": "same line\n" * 5, "lang": "en"}, cfg) == "repeated_lines"
    assert first_failure({"text": "x = 1\n" * 5, "lang": "code"}, cfg) is None  # code is exempt
    assert first_failure({"text": "대한민국은 민주공화국이다.", "lang": "ko"}, cfg) is None


def test_splits_are_stable_and_hold_out_each_language():
    docs = [{"doc_id": f"d{i}", "lang": "ko" if i % 2 else "en"} for i in range(10)]
    assign_splits(docs, 0.1)
    held = {d["doc_id"] for d in docs if d["split"] == "heldout"}
    assert {d["lang"] for d in docs if d["split"] == "heldout"} == {"ko", "en"}
    again = [{"doc_id": f"d{i}", "lang": "ko" if i % 2 else "en"} for i in reversed(range(10))]
    assign_splits(again, 0.1)
    assert {d["doc_id"] for d in again if d["split"] == "heldout"} == held
