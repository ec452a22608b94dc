"""The token stream the adaptation phases and the baseline arm train on.

Each language's curated train documents are read in manifest order (deterministic: curate writes
them so), tokenized with the arm's tokenizer, joined with EOS and cut into ``seq_length`` blocks;
a language read to its end starts over (its epoch count goes up). Blocks of the languages are
interleaved by ``lang_weights`` (each block goes to the language furthest below its share), so the
k-th block is the same whatever reads it. A phase trains blocks ``[start, start + count)``: the
phases read consecutive ranges, and the baseline reads as many blocks from 0 with the base
tokenizer, i.e. the same number of training tokens. What each range consumed is recorded."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class LangCursor:
    """Where one language's reading stands."""

    lang: str
    docs: int = 0
    epochs: int = 0
    text_bytes: int = 0
    order: Any = field(default_factory=hashlib.sha256)  # doc ids in the order they were read


def _doc_texts(curated: Path, lang: str, cursor: LangCursor) -> Iterator[tuple[str, str]]:
    from data_gen.curated import iter_batches

    while True:
        found = False
        for batch in iter_batches(curated, ["doc_id", "lang", "text"], split="train", verify="size"):
            cols = batch.to_pydict()
            for doc_id, doc_lang, text in zip(cols["doc_id"], cols["lang"], cols["text"], strict=True):
                if doc_lang == lang:
                    found = True
                    yield doc_id, text
        if not found:
            raise ValueError(f"adapt: {curated} has no train documents in language {lang!r}")
        cursor.epochs += 1


def _lang_blocks(curated: Path, tok: Any, lang: str, seq_length: int,
                 cursor: LangCursor) -> Iterator[list[int]]:
    eos = tok.eos_token_id
    buf: list[int] = []
    for doc_id, text in _doc_texts(curated, lang, cursor):
        buf.extend(tok(text, add_special_tokens=False)["input_ids"])
        buf.append(eos)
        cursor.docs += 1
        cursor.text_bytes += len(text.encode("utf-8"))
        cursor.order.update(doc_id.encode() + b"\n")
        while len(buf) >= seq_length:
            yield buf[:seq_length]
            del buf[:seq_length]


class BlockStream:
    """Blocks of ``seq_length`` tokens, languages interleaved by weight (see the module doc)."""

    def __init__(self, curated: Path, tok: Any, seq_length: int, lang_weights: dict[str, float]) -> None:
        total = sum(lang_weights.values())
        self.weights = {lang: w / total for lang, w in sorted(lang_weights.items())}
        self.cursors = {lang: LangCursor(lang) for lang in self.weights}
        self._iters = {lang: _lang_blocks(curated, tok, lang, seq_length, self.cursors[lang])
                       for lang in self.weights}
        self.taken = dict.fromkeys(self.weights, 0)
        self.seq_length = seq_length

    def _next_lang(self) -> str:
        n = sum(self.taken.values()) + 1
        return max(self.weights, key=lambda lang: (self.weights[lang] * n - self.taken[lang], lang))

    def __iter__(self) -> Iterator[tuple[str, list[int]]]:
        while True:
            lang = self._next_lang()
            self.taken[lang] += 1
            yield lang, next(self._iters[lang])

    def summary(self) -> dict[str, Any]:
        return {lang: {"blocks": self.taken[lang], "tokens": self.taken[lang] * self.seq_length,
                       "docs_read": c.docs, "epochs_completed": c.epochs, "text_bytes_read": c.text_bytes,
                       "doc_order_sha256": c.order.hexdigest()}
                for lang, c in self.cursors.items()}


class BlockDataset(torch.utils.data.IterableDataset):
    """Blocks ``[start, start + count)`` of a fresh stream, as causal-LM examples. Deterministic,
    so a resumed Trainer that skips the batches it already trained sees the same ones."""

    def __init__(self, curated: Path, tok: Any, seq_length: int, lang_weights: dict[str, float],
                 start: int, count: int) -> None:
        self.args = (curated, tok, seq_length, lang_weights)
        self.start, self.count = start, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for i, (_, block) in enumerate(BlockStream(*self.args)):
            if i >= self.start + self.count:
                return
            if i >= self.start:
                ids = torch.tensor(block, dtype=torch.long)
                yield {"input_ids": ids, "labels": ids.clone()}


def range_summary(curated: Path, tok: Any, seq_length: int, lang_weights: dict[str, float],
                  start: int, count: int) -> dict[str, Any]:
    """What blocks ``[start, start + count)`` hold: their hash, and per language how much of the
    corpus the stream had read by the range's end (read again: the record does not depend on how
    the Trainer iterated)."""
    stream = BlockStream(curated, tok, seq_length, lang_weights)
    order = hashlib.sha256()
    for i, (_, block) in enumerate(stream):
        if i >= start:
            order.update(torch.tensor(block, dtype=torch.int32).numpy().tobytes())
        if i + 1 >= start + count:
            break
    return {"start_block": start, "blocks": count, "tokens": count * seq_length,
            "blocks_sha256": order.hexdigest(), "read_by_end": stream.summary()}
