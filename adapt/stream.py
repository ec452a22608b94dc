"""The token stream the adaptation phases and the baseline arm train on.

Each language's curated train documents are read in manifest order (deterministic: curate writes
them so), tokenized with the arm's tokenizer, joined with EOS and cut into ``seq_length`` blocks;
a language read to its end starts over (its epoch count goes up). Blocks of the languages are
interleaved by ``lang_weights`` (each block goes to the language furthest below its share), so the
k-th block is the same whatever reads it. A phase trains blocks ``[start, start + count)``: the
phases read consecutive ranges, and the baseline reads as many blocks from 0 with the base
tokenizer, i.e. the same number of training tokens. What each range consumed is recorded.

A **cursor** is the stream's whole state at a block boundary: per language, where the next unread
document lies (shard, row), the tokens read past the last block, and what has been read so far;
and how many blocks each language has had. A phase saves the cursor at its range's end, and the
next phase starts there: it neither tokenizes nor reads the documents before it (a stream rebuilt
from block 0 would tokenize every earlier phase's text again, on the rank that reads the data: 25B
tokens before the LoRA phase on the kormo profiles). A cursor carries the fingerprint of what
shapes the stream (data, tokenizer, block length, weights) and is used only where it matches."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

CURSOR_FORMAT = "adapt-stream-cursor/1"
CURSOR_FILE = "stream_cursor.json"  # in a phase's folder: the stream where the phase stopped


@dataclass
class LangCursor:
    """Where one language's reading stands."""

    lang: str
    docs: int = 0
    epochs: int = 0
    text_bytes: int = 0
    order: str = ""  # sha256 chained over the doc ids in the order they were read
    shard: int = 0   # the next unread document: shard index (manifest order) ...
    row: int = 0     # ... and row in that shard (counting every row)
    buf: list[int] = field(default_factory=list)  # tokens read, not yet in a block (a long document's
    #                                                 may fill several)

    def read(self, doc_id: str, text: str) -> None:
        self.docs += 1
        self.text_bytes += len(text.encode("utf-8"))
        self.order = hashlib.sha256(f"{self.order}{doc_id}\n".encode()).hexdigest()


def _shard_rows(path: Path, lang: str, first_row: int) -> Iterator[tuple[int, str, str]]:
    """(row, doc_id, text) of the shard's train documents in ``lang`` from row ``first_row``;
    row groups wholly before it are not read."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    start, groups = 0, []
    for i in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(i).num_rows
        if start + n > first_row:
            groups.append(i)
        else:
            start += n
    if not groups:
        return
    row = start
    for batch in pf.iter_batches(row_groups=groups, columns=["doc_id", "lang", "split", "text"]):
        cols = batch.to_pydict()
        for doc_id, doc_lang, split, text in zip(cols["doc_id"], cols["lang"], cols["split"], cols["text"],
                                                 strict=True):
            if row >= first_row and doc_lang == lang and split == "train":
                yield row, doc_id, text
            row += 1


def _doc_texts(curated: Path, lang: str, cursor: LangCursor) -> Iterator[tuple[str, str]]:
    """The language's train documents from the cursor on, for ever (epoch after epoch); the
    cursor moves past each document as it is handed out."""
    from data_gen.curated import curated_shards

    shards = curated_shards(curated, verify="size")
    while True:
        whole_pass = (cursor.shard, cursor.row) == (0, 0)
        found = False
        for index in range(cursor.shard, len(shards)):
            first = cursor.row if index == cursor.shard else 0
            for row, doc_id, text in _shard_rows(shards[index], lang, first):
                found = True
                cursor.shard, cursor.row = index, row + 1
                yield doc_id, text
        if whole_pass and not found:
            raise ValueError(f"adapt: {curated} has no train documents in language {lang!r}")
        cursor.epochs += 1
        cursor.shard, cursor.row = 0, 0


def _lang_blocks(curated: Path, tok: Any, lang: str, seq_length: int,
                 cursor: LangCursor) -> Iterator[list[int]]:
    eos, buf = tok.eos_token_id, cursor.buf

    def cut() -> Iterator[list[int]]:
        while len(buf) >= seq_length:
            block = buf[:seq_length]
            del buf[:seq_length]
            yield block

    yield from cut()  # a cursor may stand inside a long document: its blocks come first
    for doc_id, text in _doc_texts(curated, lang, cursor):
        buf.extend(tok(text, add_special_tokens=False)["input_ids"])
        buf.append(eos)
        cursor.read(doc_id, text)
        yield from cut()


def stream_fingerprint(curated: Path, tok: Any, seq_length: int, lang_weights: dict[str, float]) -> str:
    """What shapes the stream: the curated manifest, the tokenizer, the block length, the weights."""
    from data_gen.curated import MANIFEST_FILE

    parts = {"manifest": hashlib.sha256((Path(curated) / MANIFEST_FILE).read_bytes()).hexdigest(),
             "tokenizer": hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest(),
             "eos": tok.eos_token_id, "seq_length": seq_length,
             "weights": {k: lang_weights[k] for k in sorted(lang_weights)}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class BlockStream:
    """Blocks of ``seq_length`` tokens, languages interleaved by weight (see the module doc),
    from block 0 or from a ``cursor`` (:meth:`cursor`'s dict)."""

    def __init__(self, curated: Path, tok: Any, seq_length: int, lang_weights: dict[str, float],
                 cursor: dict[str, Any] | None = None) -> None:
        total = sum(lang_weights.values())
        self.weights = {lang: w / total for lang, w in sorted(lang_weights.items())}
        self.seq_length = seq_length
        self.fingerprint = stream_fingerprint(curated, tok, seq_length, lang_weights)
        if cursor is None:
            self.block, self.taken = 0, dict.fromkeys(self.weights, 0)
            self.cursors = {lang: LangCursor(lang) for lang in self.weights}
        else:
            if cursor.get("format") != CURSOR_FORMAT or cursor["fingerprint"] != self.fingerprint:
                raise ValueError("adapt: the stream cursor was made from other data, tokenizer or settings")
            state = copy.deepcopy(cursor)
            self.block, self.taken = state["block"], state["taken"]
            self.cursors = {lang: LangCursor(**state["langs"][lang]) for lang in self.weights}
        self._iters = {lang: _lang_blocks(curated, tok, lang, seq_length, self.cursors[lang])
                       for lang in self.weights}

    def _next_lang(self) -> str:
        n = sum(self.taken.values()) + 1
        return max(self.weights, key=lambda lang: (self.weights[lang] * n - self.taken[lang], lang))

    def __iter__(self) -> Iterator[tuple[str, list[int]]]:
        while True:
            lang = self._next_lang()
            block = next(self._iters[lang])
            self.taken[lang] += 1
            self.block += 1
            yield lang, block

    def cursor(self) -> dict[str, Any]:
        """The state after the last block handed out (JSON-ready): where a later reader starts."""
        return copy.deepcopy({"format": CURSOR_FORMAT, "fingerprint": self.fingerprint, "block": self.block,
                              "taken": self.taken,
                              "langs": {lang: asdict(c) for lang, c in self.cursors.items()}})

    def summary(self) -> dict[str, Any]:
        """Per language, what the stream has read from block 0 to here."""
        return {lang: {"blocks": self.taken[lang], "tokens": self.taken[lang] * self.seq_length,
                       "docs_read": c.docs, "epochs_completed": c.epochs, "text_bytes_read": c.text_bytes,
                       "doc_order_sha256": c.order}
                for lang, c in self.cursors.items()}


def _range(stream: BlockStream, start: int, count: int) -> Iterator[list[int]]:
    """Blocks ``[start, start + count)`` of ``stream``, which stands at or before ``start``."""
    if stream.block > start:
        raise ValueError(f"adapt: a stream at block {stream.block} cannot go back to {start}")
    for _, block in stream:
        if stream.block > start:
            yield block
        if stream.block >= start + count:
            return


class BlockDataset(torch.utils.data.IterableDataset):
    """Blocks ``[start, start + count)`` as causal-LM examples, read from ``cursor`` when it stands
    at ``start`` (else from block 0). Deterministic, so a resumed Trainer that skips the batches it
    already trained sees the same ones. As it reads, it records the range (:attr:`record`: the
    blocks' hash, what was read by the range's end, and the cursor there) for the phase's metrics."""

    def __init__(self, curated: Path, tok: Any, seq_length: int, lang_weights: dict[str, float],
                 start: int, count: int, cursor: dict[str, Any] | None = None) -> None:
        self.args = (curated, tok, seq_length, lang_weights)
        self.start, self.count = start, count
        self.cursor = cursor if cursor is not None and cursor["block"] == start else None
        self.record: dict[str, Any] | None = None

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.record = None
        stream = BlockStream(*self.args, cursor=self.cursor)
        order = hashlib.sha256()
        for block in _range(stream, self.start, self.count):
            order.update(torch.tensor(block, dtype=torch.int32).numpy().tobytes())
            if stream.block == self.start + self.count:  # the range's last block: its record is whole
                self.record = _record(stream, self.start, self.count, order)
            ids = torch.tensor(block, dtype=torch.long)
            yield {"input_ids": ids, "labels": ids.clone()}


def _record(stream: BlockStream, start: int, count: int, order: Any) -> dict[str, Any]:
    return {"start_block": start, "blocks": count, "tokens": count * stream.seq_length,
            "blocks_sha256": order.hexdigest(), "read_by_end": stream.summary(), "cursor": stream.cursor()}


def range_summary(curated: Path, tok: Any, seq_length: int, lang_weights: dict[str, float],
                  start: int, count: int, cursor: dict[str, Any] | None = None) -> dict[str, Any]:
    """What blocks ``[start, start + count)`` hold, read afresh (from ``cursor`` when it stands at
    ``start``): as :attr:`BlockDataset.record`."""
    data = BlockDataset(curated, tok, seq_length, lang_weights, start, count, cursor)
    for _ in data:
        pass
    assert data.record is not None
    return data.record
