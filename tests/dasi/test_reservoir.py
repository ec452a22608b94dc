from __future__ import annotations

import random

from dasi.reservoir import CharReservoir


def _offer_all(reservoir: CharReservoir, docs: list[tuple[str, str]], peak: list[int]) -> list[str]:
    for doc_id, text in docs:
        key = reservoir.key(doc_id)
        if reservoir.wants(key):
            reservoir.add(key, text)
        peak[0] = max(peak[0], reservoir.chars)
    return reservoir.texts()


def test_reservoir_is_order_independent_seeded_and_bounded():
    rng = random.Random(0)
    docs = [(f"doc-{i}", f"doc-{i}|" + "x" * rng.randint(1, 300)) for i in range(2000)]
    budget, peak = 5000, [0]
    first = _offer_all(CharReservoir(budget, seed=0), docs, peak)
    assert sum(map(len, first)) == budget  # the last text is cut to fill it exactly
    assert peak[0] < budget + 310  # never more than the budget plus one document
    shuffled = docs[:]
    rng.shuffle(shuffled)
    assert _offer_all(CharReservoir(budget, seed=0), shuffled, [0]) == first
    other = _offer_all(CharReservoir(budget, seed=1), docs, [0])
    assert set(first) != set(other)  # another seed takes other documents
