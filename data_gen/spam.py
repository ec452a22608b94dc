"""Korean spam filter: a versioned term list (configs/spam/ko-v<N>.txt) of gambling, adult and
illegal-service ad phrases; a document with enough distinct terms is dropped."""

from __future__ import annotations

import functools
import re
import unicodedata
from pathlib import Path
from typing import Literal

from datatrove.data import Document
from pydantic import Field, PositiveInt, field_serializer

from dasi.strict import StrictModel
from data_gen.source_filter import SourceFilter

_VERSION = re.compile(r"^#\s*version:\s*(\d+)\s*$")


def _normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def load_terms(path: str | Path) -> tuple[int, frozenset[str]]:
    """(version, terms) of a term list: ``# version: N`` first, ``#`` comments, one term a line."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    match = _VERSION.match(lines[0]) if lines else None
    if match is None:
        raise ValueError(f"{path}: the first line must be '# version: N'")
    terms = frozenset(_normalize(" ".join(ln.split())) for ln in lines
                      if ln.strip() and not ln.lstrip().startswith("#"))
    if not terms:
        raise ValueError(f"{path}: no terms")
    return int(match.group(1)), terms


@functools.lru_cache(maxsize=4096)
def _term_pattern(term: str) -> re.Pattern[str]:
    # Spam writes "토토 사이트" and "토토사이트" alike: a space in a term matches any run of spaces or none.
    return re.compile(r"\s*".join(re.escape(word) for word in term.split(" ")))


def spam_hits(text: str, terms: frozenset[str]) -> int:
    """How many distinct terms occur in ``text`` (substrings: Korean attaches particles to words)."""
    norm = _normalize(text)
    return sum(1 for term in terms if _term_pattern(term).search(norm))


class SpamConfig(StrictModel):
    terms_file: str = Field("configs/spam/ko-v1.txt", description="versioned term list")
    min_hits: PositiveInt = Field(2, description="distinct terms that make a document spam")
    # Code is not checked: source code legitimately holds such lists (moderation blocklists).
    # English documents are, because Korean spam pages are often mislabelled or mixed.
    langs: frozenset[Literal["ko", "en", "code"]] = frozenset({"ko", "en"})

    @field_serializer("langs")
    def _sorted(self, langs: frozenset[str]) -> list[str]:
        return sorted(langs)  # a set's order follows string hashing, which differs per process


class SpamFilter(SourceFilter):
    """Drops (reason ``spam``) documents with at least ``min_hits`` distinct spam terms; the step's
    name carries the list version, so the merged stats say which list was used."""

    reason = "spam"

    def __init__(self, config: SpamConfig | None = None, exclusion_writer=None):
        self.config = config or SpamConfig()
        self.list_version, self.terms = load_terms(self.config.terms_file)
        self.name = f"🎰 Spam terms (list v{self.list_version})"
        super().__init__(exclusion_writer)

    def keep(self, doc: Document) -> bool:
        if doc.metadata.get("lang") not in self.config.langs:
            return True
        hits = spam_hits(doc.text, self.terms)
        if hits < self.config.min_hits:
            return True
        doc.metadata["spam_hits"], doc.metadata["spam_list_version"] = hits, self.list_version
        return False
