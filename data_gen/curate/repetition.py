"""datatrove's Gopher repetition filter with its word n-gram checks computed over 64-bit hashes
of every n-gram at once (numpy) instead of one joined string per position (most of its time).

The checks keep datatrove's exact definitions: the top n-gram is compared as ``" ".join`` of its
words and the duplicated n-grams as ``"".join`` (so ``["ab", "c"]`` repeats ``["a", "bc"]``), the
top one is the most frequent, the first seen among ties, and duplicated n-grams are found by the
same left-to-right scan that skips past each repeat. Equal strings always hash equal; two different
n-grams would have to collide in 64 bits to change a decision. The paragraph and line checks run in
datatrove's own ``filter`` (built without n-gram checks), in datatrove's order, before these.
"""

from __future__ import annotations

import bisect

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.filters import GopherRepetitionFilter
from datatrove.utils.text import split_into_words

_BASE = 0x9E3779B97F4A7C15  # odd, so invertible mod 2**64
_BASE_INV = pow(_BASE, -1, 2**64)


def _powers(base: int, k: int) -> np.ndarray:
    """base ** j mod 2**64 for j < k (array arithmetic wraps silently; numpy scalars would warn)."""
    out = np.full(max(k, 1), base, np.uint64)
    out[0] = 1
    return np.cumprod(out)[:k]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class SpanHashes:
    """Hashes of the substrings ``text[start:end]`` of one text, any number at once: a polynomial of
    the code points from a prefix sum, shifted to position 0, mixed with the length."""

    def __init__(self, text: str) -> None:
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32).astype(np.uint64)
        self._prefix = np.concatenate([np.zeros(1, np.uint64), np.cumsum(cps * _powers(_BASE, len(cps)))])
        self._unshift = _powers(_BASE_INV, len(cps) + 1)

    def __call__(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        poly = (self._prefix[end] - self._prefix[start]) * self._unshift[start]
        return _mix(poly ^ ((end - start).astype(np.uint64) << np.uint64(40)))


class WordNgrams:
    """The n-grams of a word list as spans of ``sep.join(words)``: hash and length of each."""

    def __init__(self, words: list[str], sep: str) -> None:
        lengths = np.fromiter(map(len, words), np.int64, len(words)) + len(sep)
        self.starts = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)])  # of each word
        self.sep, self.hashes = len(sep), SpanHashes(sep.join(words))

    def grams(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(hash, character length) of the n-gram at each position."""
        start, end = self.starts[:-n], self.starts[n:] - self.sep
        return self.hashes(start, end), end - start


def top_duplicate_chars(grams: WordNgrams, n: int) -> int:
    """datatrove's ``find_top_duplicate(get_n_grams(words, n))``: characters of the most frequent
    n-gram (``" ".join``; the first seen among ties, as Counter.most_common) times its count."""
    hashes, lengths = grams.grams(n)
    _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
    top = counts.max()
    at = first[counts == top].min()
    return int(lengths[at]) * int(top)


def all_duplicate_chars(grams: WordNgrams, n: int) -> int:
    """datatrove's ``find_all_duplicate(words, n)`` (``"".join`` n-grams). Its scan visits each
    position, counts one whose n-gram an earlier visited position had, and then skips the next
    ``n - 1`` positions. Only positions whose n-gram occurred before can count, so the scan here
    steps through those alone; a first occurrence is visited unless a skip covers it."""
    hashes, lengths = grams.grams(n)
    if not len(hashes):
        return 0
    _, first, group = np.unique(hashes, return_index=True, return_inverse=True)
    later = np.flatnonzero(first[group] != np.arange(len(hashes)))  # positions of second+ occurrences
    skip_starts: list[int] = []  # skipped positions: [s, s + n - 1) for each s
    seen: dict[int, bool] = {}  # group -> an earlier position of it was visited
    repeated, idx = 0, 0
    for at, g in zip(later.tolist(), group[later].tolist(), strict=True):
        if at < idx:
            continue  # skipped
        if g not in seen:
            f = int(first[g])
            k = bisect.bisect_right(skip_starts, f) - 1
            seen[g] = k < 0 or f >= skip_starts[k] + n - 1  # the first occurrence was visited
        if seen[g]:
            repeated += int(lengths[at])
            idx = at + n
            skip_starts.append(at + 1)
        else:
            seen[g] = True
    return repeated


class HashedGopherRepetitionFilter(GopherRepetitionFilter):
    """GopherRepetitionFilter, same arguments and decisions (reasons included), faster n-gram checks."""

    def __init__(self, *, top_n_grams=((2, 0.2), (3, 0.18), (4, 0.16)),
                 dup_n_grams=((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)), **kwargs):
        super().__init__(top_n_grams=(), dup_n_grams=(), **kwargs)  # paragraph and line checks only
        self.hashed_top_n_grams, self.hashed_dup_n_grams = tuple(top_n_grams), tuple(dup_n_grams)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        verdict = super().filter(doc)
        if verdict is not True:
            return verdict
        text = doc.text
        words = split_into_words(text, self.language)  # datatrove's cache: the split super() made
        spaced = WordNgrams(words, " ")
        for n, n_frac in self.hashed_top_n_grams:
            if len(words) >= n and top_duplicate_chars(spaced, n) / len(text) > n_frac:
                return False, f"top_{n}_gram"
        joined = WordNgrams(words, "")
        for n, n_frac in self.hashed_dup_n_grams:
            if all_duplicate_chars(joined, n) / len(text) > n_frac:
                return False, f"duplicated_{n}_n_grams"
        return True
