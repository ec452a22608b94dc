"""Decontamination: word n-grams of evaluation items (and held-out texts, added by the pipeline) in
an index of 64-bit hashes; a training document sharing any gram with an item is dropped.

Text is normalized before splitting into words: NFKC, case folded, punctuation and symbols replaced
by spaces. An item shorter than ``n`` words contributes its whole word sequence as one gram if it
has at least ``min_words`` words (kobest_copa items are 8-15 words); shorter items are not indexed,
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
import xxhash
from datatrove.data import Document, DocumentsPipeline
from pydantic import Field, PositiveInt, model_validator

from dasi.strict import StrictModel
from data_gen.source_filter import SourceFilter, doc_source

if TYPE_CHECKING:
    from evals.harness import TaskSpec

INDEX_FORMAT = "ngram-index/1"
# The fields that make an item's text, per local task; a local task not listed here is an error.
ITEM_FIELDS = {"kobest_copa": ("premise", "alternative_1", "alternative_2")}
_NOT_WORD = re.compile(r"[^\w\s]|_")


def words(text: str) -> list[str]:
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split()


def _hash(gram: list[str]) -> int:
    return xxhash.xxh64_intdigest(" ".join(gram).encode("utf-8"))


class DecontamConfig(StrictModel):
    n: PositiveInt = Field(13, description="words per gram")
    min_words: PositiveInt = Field(8, description="shortest item indexed whole when under n words")

    @model_validator(mode="after")
    def _min_within_n(self) -> DecontamConfig:
        if self.min_words > self.n:
            raise ValueError("min_words must be at most n")
        return self


class NgramIndex:
    def __init__(self, n: int = 13, min_words: int = 8) -> None:
        DecontamConfig(n=n, min_words=min_words)
        self.n, self.min_words = n, min_words
        self.item_ids: list[str] = []
        self._grams: dict[int, int] = {}  # gram hash -> index into item_ids (first item wins)
        self._lengths: set[int] = set()  # gram lengths present: n, and those of short items

    def add(self, item_id: str, text: str) -> int:
        """Index ``text`` under ``item_id``; returns how many grams it contributed."""
        ws = words(text)
        length = min(self.n, len(ws))
        if length < self.min_words:
            return 0
        self.item_ids.append(item_id)
        for i in range(len(ws) - length + 1):
            self._grams.setdefault(_hash(ws[i: i + length]), len(self.item_ids) - 1)
        self._lengths.add(length)
        return len(ws) - length + 1

    def match(self, text: str) -> str | None:
        """The item of the first gram of ``text`` (in text order) that is in the index, if any."""
        ws = words(text)
        for i in range(len(ws)):
            for length in self._lengths:
                if i + length <= len(ws) and (hit := self._grams.get(_hash(ws[i: i + length]))) is not None:
                    return self.item_ids[hit]
        return None

    def __len__(self) -> int:
        return len(self._grams)

    def save(self, path: str | Path) -> None:
        meta = {"format": INDEX_FORMAT, "n": self.n, "min_words": self.min_words,
                "lengths": sorted(self._lengths), "item_ids": self.item_ids}
        with open(path, "wb") as f:  # a file object: numpy would otherwise append .npz to the name
            np.savez(f, hashes=np.fromiter(self._grams, np.uint64, len(self._grams)),
                     items=np.fromiter(self._grams.values(), np.uint32, len(self._grams)),
                     meta=np.array(json.dumps(meta, ensure_ascii=False)))

    @classmethod
    def load(cls, path: str | Path) -> NgramIndex:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != INDEX_FORMAT:
                raise ValueError(f"{path}: format {meta.get('format')!r}, expected {INDEX_FORMAT}")
            index = cls(meta["n"], meta["min_words"])
            index.item_ids, index._lengths = meta["item_ids"], set(meta["lengths"])
            index._grams = dict(zip(z["hashes"].tolist(), z["items"].tolist(), strict=True))
        return index


def unindexed_tasks(tasks: Iterable[TaskSpec]) -> list[str]:
    """Tasks whose items cannot be read here (hub tasks): the caller logs them, nothing is silent."""
    return [t.name for t in tasks if t.source != "local"]


def evaluation_items(tasks: Iterable[TaskSpec]) -> Iterator[tuple[str, str]]:
    """(``<task>/<line>``, item text) for every item of the local tasks, files relative to the cwd."""
    for task in tasks:
        if task.source != "local":
            continue
        if task.name not in ITEM_FIELDS:
            raise ValueError(f"decontam: no item fields known for local task {task.name}")
        lines = Path(task.local_file or "").read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(ln for ln in lines if ln.strip()):
            row = json.loads(line)
            yield f"{task.name}/{i}", " ".join(str(row[f]) for f in ITEM_FIELDS[task.name])


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
