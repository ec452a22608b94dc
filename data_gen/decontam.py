"""Decontamination: word n-grams of evaluation items (and held-out texts, added by the pipeline) in
an index of 64-bit hashes; a training document sharing any gram with an item is dropped.

Text is normalized before splitting into words: NFKC, case folded, punctuation and symbols replaced
by spaces. An item shorter than ``n`` words contributes its whole word sequence as one gram if it
has at least ``min_words`` words (copa_ko_mini's items are 8-15 words); shorter items are not indexed,
since a match on a few common words would say nothing.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from pydantic import Field, PositiveInt, model_validator

from dasi.strict import StrictModel
from data_gen.source_filter import SourceFilter, doc_source

if TYPE_CHECKING:
    from evals.harness import TaskSpec

INDEX_FORMAT = "ngram-index/2"
# The fields that make an item's text, per lm-eval format a local task follows (TaskSpec.format);
# a local task whose format is not listed here is an error.
ITEM_FIELDS = {"kobest_copa": ("premise", "alternative_1", "alternative_2"),
               "sciq": ("question", "correct_answer", "distractor1", "distractor2", "distractor3")}
_NOT_WORD = re.compile(r"[^\w\s]|_")


def _normalized(text: str) -> str:
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold())


def words(text: str) -> list[str]:
    return _normalized(text).split()


_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplication by it is a bijection mod 2**64
_MAX_SPACE = 0x3000  # no code point above this one is whitespace
# str.split()'s separators: the code points whose str.isspace() is true.
_IS_SPACE = np.array([chr(c).isspace() for c in range(_MAX_SPACE + 1)] + [False])
_POWERS = np.cumprod(np.full(64, _BASE, np.uint64))  # _BASE ** (k + 1), wrapping; grown on demand


def _powers(k: int) -> np.ndarray:
    """_BASE ** (j + 1) for j < at least k (array arithmetic: numpy scalars would warn on overflow)."""
    global _POWERS
    while len(_POWERS) < k:
        _POWERS = np.concatenate([_POWERS, _POWERS * _POWERS[-1:]])
    return _POWERS


def word_hashes(text: str) -> np.ndarray:
    """A 64-bit hash of each of ``words(text)``, computed over the code points of the whole text at
    once (a polynomial of each word's code points, mixed with its length) instead of word by word."""
    cps = np.frombuffer(_normalized(text).encode("utf-32-le", "surrogatepass"), np.uint32).astype(np.uint64)
    at = np.flatnonzero(~_IS_SPACE[np.minimum(cps, _MAX_SPACE + 1)])  # the positions of word characters
    if not len(at):
        return np.zeros(0, np.uint64)
    starts = np.flatnonzero(np.diff(at, prepend=-2) != 1)  # where a run of word characters begins
    offset = np.arange(len(at)) - np.repeat(starts, np.diff(starts, append=len(at)))
    sums = np.add.reduceat(cps[at] * _powers(int(offset.max()) + 1)[offset], starts)
    return _mix(sums ^ (np.diff(starts, append=len(at)).astype(np.uint64) << np.uint64(40)))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads the polynomial's structure over all 64 bits."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def gram_hashes(word_hashes: np.ndarray, lengths: Iterable[int]) -> dict[int, np.ndarray]:
    """{length: hash of the gram of that many words starting at each position}, all positions at
    once: a polynomial of the word hashes (uint64, wrapping), built one word longer per step, then
    mixed with the length so grams of different lengths hash apart."""
    wanted, out = set(lengths), {}
    poly = np.zeros(len(word_hashes), np.uint64)
    for length in range(1, max(wanted, default=0) + 1):
        if length > len(word_hashes):
            break
        poly = poly[:len(word_hashes) - length + 1] * _BASE + word_hashes[length - 1:]
        if length in wanted:
            out[length] = _mix(poly ^ np.uint64(length))
    return out


class DecontamConfig(StrictModel):
    n: PositiveInt = Field(13, description="words per gram")
    min_words: PositiveInt = Field(8, description="shortest item indexed whole when under n words")

    @model_validator(mode="after")
    def _min_within_n(self) -> DecontamConfig:
        if self.min_words > self.n:
            raise ValueError("min_words must be at most n")
        return self


class NgramIndex:
    """Gram hashes as a sorted uint64 array beside the index of each one's item (12 bytes a gram);
    lookups are a vectorised binary search over all of a text's grams at once."""

    def __init__(self, n: int = 13, min_words: int = 8) -> None:
        DecontamConfig(n=n, min_words=min_words)
        self.n, self.min_words = n, min_words
        self.item_ids: list[str] = []
        self._hashes = np.zeros(0, np.uint64)  # sorted, unique
        self._items = np.zeros(0, np.uint32)  # index into item_ids of each hash (first item added wins)
        self._pending: list[tuple[np.ndarray, int]] = []  # (gram hashes, item) added since the last sort
        self._lengths: set[int] = set()  # gram lengths present: n, and those of short items

    def add(self, item_id: str, text: str) -> int:
        """Index ``text`` under ``item_id``; returns how many grams it contributed."""
        hashes = word_hashes(text)
        length = min(self.n, len(hashes))
        if length < self.min_words:
            return 0
        self.item_ids.append(item_id)
        grams = gram_hashes(hashes, [length])[length]
        self._pending.append((grams, len(self.item_ids) - 1))
        self._lengths.add(length)
        return len(grams)

    def _sorted(self) -> None:
        """Merge the pending grams into the sorted arrays; a hash already present keeps its item."""
        if not self._pending:
            return
        hashes = np.concatenate([self._hashes, *(g for g, _ in self._pending)])
        items = np.concatenate([self._items, *(np.full(len(g), i, np.uint32) for g, i in self._pending)])
        # np.unique's return_index is the first occurrence: the earliest item added, as before the sort
        self._hashes, first = np.unique(hashes, return_index=True)
        self._items = items[first]
        self._pending = []

    def match(self, text: str) -> str | None:
        """The item of the first gram of ``text`` (in text order; at one position, the shortest
        gram first) that is in the index, if any."""
        self._sorted()
        if not len(self._hashes):
            return None
        best: tuple[int, int, int] | None = None  # (position, length, item) of the first hit so far
        for length, grams in gram_hashes(word_hashes(text), self._lengths).items():
            at = np.searchsorted(self._hashes, grams).clip(max=len(self._hashes) - 1)
            hits = np.flatnonzero(self._hashes[at] == grams)
            if len(hits) and (best is None or (int(hits[0]), length) < best[:2]):
                best = (int(hits[0]), length, int(self._items[at[hits[0]]]))
        return None if best is None else self.item_ids[best[2]]

    def __len__(self) -> int:
        self._sorted()
        return len(self._hashes)

    def save(self, path: str | Path) -> None:
        self._sorted()
        meta = {"format": INDEX_FORMAT, "n": self.n, "min_words": self.min_words,
                "lengths": sorted(self._lengths), "item_ids": self.item_ids}
        with open(path, "wb") as f:  # a file object: numpy would otherwise append .npz to the name
            np.savez(f, hashes=self._hashes, items=self._items,
                     meta=np.array(json.dumps(meta, ensure_ascii=False)))

    @classmethod
    def load(cls, path: str | Path) -> NgramIndex:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != INDEX_FORMAT:
                raise ValueError(f"{path}: format {meta.get('format')!r}, expected {INDEX_FORMAT}")
            index = cls(meta["n"], meta["min_words"])
            index.item_ids, index._lengths = meta["item_ids"], set(meta["lengths"])
            index._hashes, index._items = z["hashes"], z["items"]
        return index


def unindexed_tasks(tasks: Iterable[TaskSpec]) -> list[str]:
    """Tasks whose items cannot be read here (hub tasks): the caller logs them, nothing is silent."""
    return [t.name for t in tasks if t.source != "local"]


def evaluation_items(tasks: Iterable[TaskSpec]) -> Iterator[tuple[str, str]]:
    """(``<task>/<line>``, item text) for every item of the local tasks, files relative to the cwd."""
    for task in tasks:
        if task.source != "local":
            continue
        fields = ITEM_FIELDS.get(task.format or task.name)
        if fields is None:
            raise ValueError(f"decontam: no item fields known for local task {task.name} "
                             f"(format {task.format})")
        lines = Path(task.local_file or "").read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(ln for ln in lines if ln.strip()):
            row = json.loads(line)
            yield f"{task.name}/{i}", " ".join(str(row[f]) for f in fields)


class DecontaminationFilter(SourceFilter):
    """Drops (reason ``decontaminated``) documents matching the index and writes one JSON line per
    drop, ``{"doc_id", "source", "matched_item"}``, to ``<report_dir>/<rank:05d>.jsonl``.

    ``index`` may be a saved index's path: it is then loaded in the worker, so the step pickles small.
    """

    name = "🧪 Decontamination"
    reason = "decontaminated"

    def __init__(self, index: NgramIndex | str | Path, report_dir: str | Path, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.index, self.report_dir = index, Path(report_dir)
        self._report = None

    def keep(self, doc: Document) -> bool:
        if not isinstance(self.index, NgramIndex):
            self.index = NgramIndex.load(self.index)
        item = self.index.match(doc.text)
        if item is None:
            return True
        line = {"doc_id": doc.id, "source": doc_source(doc), "matched_item": item}
        self._report.write(json.dumps(line, ensure_ascii=False) + "\n")
        return False

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self.report_dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.report_dir / f"{rank:05d}.jsonl", "w", encoding="utf-8") as self._report:
                yield from super().run(data, rank, world_size)
        finally:
            self._report = None  # an open or closed file would not pickle
