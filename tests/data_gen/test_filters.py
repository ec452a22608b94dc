from datatrove.data import Document
from datatrove.pipeline.filters import FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter

from dasi.splits import heldout_by_hash
from data_gen.curate.config import CurateConfig
from data_gen.curate.quality import HangulFilter, MinChars, quality_steps, word_tokenizer_for
from data_gen.curate.readers import seed_document
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


def test_filters_count_drops_per_source():
    docs = [Document("짧다", "a", metadata={"source": "kolaw", "lang": "ko"}),
            Document("This is English, not Korean.", "b", metadata={"source": "synthetic_ko", "lang": "ko"}),
            Document("대한민국은 민주공화국이다.", "c", metadata={"source": "kolaw", "lang": "ko"}),
            Document("x = 1\n" * 5, "d", metadata={"source": "code", "lang": "code"})]
    short, hangul = MinChars(10), HangulFilter(0.5)
    kept = [d.id for d in hangul.run(short.run(iter(docs)))]
    assert kept == ["c", "d"]  # code is exempt from the Hangul ratio
    assert short.stats["dropped/kolaw"].n == 1
    assert hangul.stats["dropped/synthetic_ko"].n == 1 and "dropped/kolaw" not in hangul.stats.stats


def test_quality_steps_decide_as_datatrove_filters_do(natural_docs):
    """Our per-language steps take datatrove's own decisions (same filters, same tokenizer),
    and code documents skip them."""
    cfg = CurateConfig()
    steps = quality_steps(cfg)
    plain = {lang: [GopherQualityFilter(**q.gopher_quality.model_dump(), language=word_tokenizer_for(lang)),
                    GopherRepetitionFilter(language=word_tokenizer_for(lang)),
                    FineWebQualityFilter(language=word_tokenizer_for(lang))]
             for lang, q in cfg.quality.items()}
    decided = 0
    for d in map(seed_document, natural_docs):
        ours = [step.filter(d) for step in steps]
        if d.metadata["lang"] == "code":
            assert ours == [True] * 3
            continue
        theirs = [f.filter(d) for f in plain[d.metadata["lang"]]]
        assert [r is True for r in ours] == [r is True for r in theirs]
        decided += sum(r is not True for r in ours)
    assert decided > 0  # some real documents are dropped


def test_heldout_by_hash_is_a_stable_fraction():
    ids = [f"doc-{i}" for i in range(4000)]
    held = [i for i in ids if heldout_by_hash(i, 0.1)]
    assert 300 < len(held) < 500
    assert held == [i for i in reversed(ids) if heldout_by_hash(i, 0.1)][::-1]
    assert not any(heldout_by_hash(i, 0.0) for i in ids)
