"""A bounded, seeded sample of documents, taken in one streaming pass: what the tokenizer stage and
the adaptation path's vocabulary stage train their BPEs on."""

from __future__ import annotations

import hashlib
import heapq


class CharReservoir:
    """The documents with the smallest seeded hash keys whose characters reach ``budget``.

    A key is sha256(seed, doc_id), so the sample is uniform and the same set whatever order or
    sharding the documents arrive in. Holds at most ``budget`` characters plus one document: a
    document is dropped as soon as the ones with smaller keys fill the budget without it."""

    def __init__(self, budget: int, seed: int) -> None:
        self.budget, self.seed = budget, seed
        self._heap: list[tuple[int, str]] = []  # (-key, text): the largest key on top
        self.chars = 0

    def key(self, doc_id: str) -> int:
        return int.from_bytes(hashlib.sha256(f"{self.seed}:{doc_id}".encode()).digest())

    def wants(self, key: int) -> bool:
        return self.chars < self.budget or key < -self._heap[0][0]

    def add(self, key: int, text: str) -> None:
        heapq.heappush(self._heap, (-key, text))
        self.chars += len(text)
        while self.chars - len(self._heap[0][1]) >= self.budget:
            self.chars -= len(heapq.heappop(self._heap)[1])

    def texts(self) -> list[str]:
        """The kept texts by key, the last cut so that they hold exactly ``budget`` characters."""
        out, n = [], 0
        for _, text in sorted(self._heap, reverse=True):
            out.append(text[: self.budget - n])
            n += len(out[-1])
        return out
