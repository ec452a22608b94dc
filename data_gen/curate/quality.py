"""Document filters of pass 1, each a datatrove step counting its drops per source
(``dropped/<source>``, see :mod:`data_gen.source_filter`).

Word-level filters are datatrove's own (Gopher quality, Gopher repetition with its n-gram checks
hashed, see :mod:`data_gen.curate.repetition`; FineWeb), one instance per document language with
that language's word tokenizer (Korean: kiwi; others: whitespace).
datatrove memoises the word split of the last few texts, so the three filters split each
document once. Languages without a quality entry (code) skip them.
"""

from __future__ import annotations

import functools
import re

from datatrove.data import Document
from datatrove.pipeline.filters import FineWebQualityFilter, GopherQualityFilter
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.word_tokenizers import KiwiTokenizer, WordTokenizer

from data_gen.curate.config import CurateConfig, LangQualityConfig
from data_gen.curate.repetition import HashedGopherRepetitionFilter
from data_gen.filters import hangul_ratio
from data_gen.source_filter import SourceFilter, doc_source

KIWI_MODEL = "cong"
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")


class WhitespaceWordTokenizer(WordTokenizer):
    """Words as Gopher defines them, whitespace-separated (punctuation stays attached); used for
    English since datatrove's English tokenizer needs spaCy, which this project does not install."""

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _SENTENCE.finditer(text) if m.group().strip()]


@functools.cache
def _kiwi():
    from kiwipiepy import Kiwi

    return Kiwi(model_type=KIWI_MODEL)


class KoreanWordTokenizer(KiwiTokenizer):
    """datatrove's Korean tokenizer with the model kiwipiepy_model ships (datatrove asks for
    ``sbg``, which it no longer does), loaded once per process however often the step is copied."""

    def __init__(self) -> None:
        super().__init__(model_type=KIWI_MODEL)

    @property
    def tokenizer(self):
        return _kiwi()


def word_tokenizer_for(lang: str) -> WordTokenizer:
    """What datatrove's filters take as ``language`` for documents of ``lang``."""
    return KoreanWordTokenizer() if lang == "ko" else WhitespaceWordTokenizer()


class MinChars(SourceFilter):
    name = "📏 min chars"
    reason = "too_short"

    def __init__(self, min_chars: int):
        super().__init__()
        self.min_chars = min_chars

    def keep(self, doc: Document) -> bool:
        return len(doc.text) >= self.min_chars


class MaxChars(SourceFilter):
    name = "📏 max chars"
    reason = "too_long"

    def __init__(self, max_chars: int):
        super().__init__()
        self.max_chars = max_chars

    def keep(self, doc: Document) -> bool:
        return len(doc.text) <= self.max_chars


class HangulFilter(SourceFilter):
    """Korean documents must be mostly Hangul (a teacher that answered in English is dropped)."""
    name = "🇰🇷 Hangul ratio"
    reason = "low_hangul"

    def __init__(self, min_ratio: float):
        super().__init__()
        self.min_ratio = min_ratio

    def keep(self, doc: Document) -> bool:
        return doc.metadata["lang"] != "ko" or hangul_ratio(doc.text) >= self.min_ratio


class PerLanguage(SourceFilter):
    """One datatrove filter per document language; documents of other languages pass. Drops are
    counted per source (``dropped/<source>``) and per datatrove reason (``dropped_<reason>``)."""

    def __init__(self, reason: str, filters: dict[str, BaseFilter]):
        super().__init__()
        self.reason, self.name, self.filters = reason, reason, filters

    def keep(self, doc: Document) -> bool:  # unused: filter() keeps datatrove's own reason
        raise NotImplementedError

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        step = self.filters.get(doc.metadata["lang"])
        if step is None:
            return True
        source = doc_source(doc)
        self.stat_update(f"total/{source}")
        result = step.filter(doc)
        if result is True:
            return True
        self.stat_update(f"dropped/{source}")
        return False, result[1] if isinstance(result, tuple) else self.reason


def quality_filter_args(q: LangQualityConfig) -> dict[str, dict]:
    """The datatrove arguments of each configured quality filter, in run order."""
    out: dict[str, dict] = {}
    if q.gopher_quality is not None:
        out["gopher_quality"] = q.gopher_quality.model_dump()
    if q.gopher_repetition is not None:
        r = q.gopher_repetition
        out["gopher_repetition"] = {**r.model_dump(exclude={"top_n_grams", "dup_n_grams"}),
                                    "top_n_grams": tuple(r.top_n_grams), "dup_n_grams": tuple(r.dup_n_grams)}
    if q.fineweb_quality is not None:
        out["fineweb_quality"] = q.fineweb_quality.model_dump()
    return out


# datatrove's classes, but for the repetition filter: the same checks, hashed (see its module)
FILTER_CLASSES: dict[str, type[BaseFilter]] = {"gopher_quality": GopherQualityFilter,
                                               "gopher_repetition": HashedGopherRepetitionFilter,
                                               "fineweb_quality": FineWebQualityFilter}


def _quality_filters(lang: str, q: LangQualityConfig) -> dict[str, BaseFilter]:
    language = word_tokenizer_for(lang)
    return {name: FILTER_CLASSES[name](**kwargs, language=language)
            for name, kwargs in quality_filter_args(q).items()}


QUALITY_FILTERS = ("gopher_quality", "gopher_repetition", "fineweb_quality")


def quality_steps(cfg: CurateConfig) -> list[PerLanguage]:
    """Gopher quality, Gopher repetition and FineWeb, in that order, each per language."""
    per_lang = {lang: _quality_filters(lang, q) for lang, q in cfg.quality.items()}
    return [PerLanguage(name, {lang: fs[name] for lang, fs in per_lang.items() if name in fs})
            for name in QUALITY_FILTERS]
