"""The hashed Gopher repetition checks against datatrove's own functions and filter, on real texts."""

import pytest
from datatrove.data import Document
from datatrove.pipeline.filters import GopherRepetitionFilter
from datatrove.pipeline.filters.gopher_repetition_filter import (
    find_all_duplicate,
    find_top_duplicate,
    get_n_grams,
)

from data_gen.curate.quality import word_tokenizer_for
from data_gen.curate.repetition import (
    HashedGopherRepetitionFilter,
    WordNgrams,
    all_duplicate_chars,
    top_duplicate_chars,
)
from data_gen.sources import KonlpySource, PydocTopicsSource, iter_documents

# datatrove joins the duplicated n-grams without a separator: ["ab", "c"] repeats ["a", "bc"];
# kiwi splits one string differently in two places ("추가" / "추", "가"); a token may hold a space
TRICKY = [["ab", "c", "x", "a", "bc", "x", "ab", "c", "x"] * 3, ["추", "가", "추가", "는"] * 7,
          ["19. 3.", "19.", "3."] * 6, ["the", "cat"] * 40 + ["a"] * 9, ["x"], []]


@pytest.fixture(scope="module")
def real_docs() -> list[Document]:
    docs = [Document(d["text"], d["doc_id"], metadata={"lang": "ko"})
            for c in ("kolaw", "kobill")
            for d in iter_documents(KonlpySource(type="konlpy", name=c, lang="ko", corpus=c))]
    pydoc = PydocTopicsSource(name="pydoc", type="pydoc_topics", lang="en", max_chars_per_doc=3000)
    return docs + [Document(d["text"], d["doc_id"], metadata={"lang": "en"})
                   for d in list(iter_documents(pydoc))[:60]]


def test_ngram_measures_equal_datatrove_functions(real_docs):
    word_lists = [word_tokenizer_for(d.metadata["lang"]).word_tokenize(d.text) for d in real_docs]
    for words in word_lists + TRICKY:
        spaced, joined = WordNgrams(words, " "), WordNgrams(words, "")
        for n in (1, 2, 3, 4):
            if len(words) >= n:
                top = find_top_duplicate(get_n_grams(words, n))
                assert top_duplicate_chars(spaced, n) == top, (words[:8], n)
        for n in range(2, 11):
            assert all_duplicate_chars(joined, n) == find_all_duplicate(words, n), (words[:8], n)


NO_LINE_CHECKS = {"dup_line_frac": None, "dup_para_frac": None, "dup_line_char_frac": None,
                  "dup_para_char_frac": None}


@pytest.mark.parametrize("args,drops", [
    ({}, set()),  # the defaults
    ({**NO_LINE_CHECKS, "top_n_grams": ((2, 0.03), (3, 0.02), (4, 0.015)), "dup_n_grams": ()}, {"top"}),
    ({**NO_LINE_CHECKS, "top_n_grams": (), "dup_n_grams": tuple((n, 0.2 - 0.015 * n) for n in range(5, 11))},
     {"duplicated"})])
def test_filter_decides_and_explains_as_datatrove(real_docs, args, drops):
    """The default thresholds, and thresholds tight enough that the n-gram checks drop some."""
    reasons = []
    for lang in ("ko", "en"):
        ours, stock = (cls(**args, language=word_tokenizer_for(lang))
                       for cls in (HashedGopherRepetitionFilter, GopherRepetitionFilter))
        for doc in (d for d in real_docs if d.metadata["lang"] == lang):
            reasons.append(stock.filter(doc))
            assert ours.filter(doc) == reasons[-1], doc.id
    assert {r[1].split("_")[0] for r in reasons if r is not True} >= drops
    assert any(r is True for r in reasons)
