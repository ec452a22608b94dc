"""Stable, content-independent orderings and held-out splits, keyed by a record's id hash."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def id_hash(record_id: str) -> str:
    return hashlib.sha256(record_id.encode()).hexdigest()


def heldout_split(items: Iterable[T], lang_of: Callable[[T], str], id_of: Callable[[T], str],
                  fraction: float) -> tuple[list[T], list[T]]:
    """Within each language, the ``ceil(fraction * n)`` items with the smallest id hash are held
    out (so at least one per language when fraction > 0); the same ids always land on the same
    side, whatever the input order. Returns (train, heldout), grouped by sorted language."""
    items = list(items)
    train: list[T] = []
    heldout: list[T] = []
    for lang in sorted({lang_of(x) for x in items}):
        group = sorted((x for x in items if lang_of(x) == lang), key=lambda x: id_hash(id_of(x)))
        k = math.ceil(fraction * len(group)) if fraction > 0 else 0
        heldout += group[:k]
        train += group[k:]
    return train, heldout


def heldout_by_hash(record_id: str, fraction: float) -> bool:
    """Whether ``record_id`` is held out: its sha256 read as a uniform number in [0, 1) is below
    ``fraction``. Decided per record, so a stream can be split without seeing the rest of it."""
    return int(id_hash(record_id)[:16], 16) / 16**16 < fraction
