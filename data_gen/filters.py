"""Document quality filters. Each returns ``None`` to keep a document or a reason to drop it."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter

_WS = re.compile(r"\s+")


def hangul_ratio(text: str) -> float:
    """Hangul characters over all letters (digits, punctuation and spaces do not count)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    hangul = sum(1 for c in letters if "\uac00" <= c <= "\ud7a3" or "\u1100" <= c <= "\u11ff"
                 or "\u3130" <= c <= "\u318f")
    return hangul / len(letters)


def duplicate_line_fraction(text: str) -> float:
    """Fraction of non-empty lines that repeat an earlier line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return 0.0
    return 1 - len(set(lines)) / len(lines)


def top_ngram_fraction(text: str, n: int) -> float:
    """Share of characters covered by the most frequent word n-gram (Gopher's repetition test)."""
    words = text.split()
    if len(words) < n + 1:
        return 0.0
    grams = Counter(tuple(words[i: i + n]) for i in range(len(words) - n + 1))
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    total = sum(len(w) for w in words)
    return count * sum(len(w) for w in gram) / total


def normalized_hash(text: str) -> str:
    """Hash used for exact dedup: NFKC, case-folded, whitespace collapsed."""
    norm = _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()
