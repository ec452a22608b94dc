"""Stage ``curate``: natural + synthetic documents filtered, deduplicated (exact and MinHash),
decontaminated and split, as datatrove passes; see :mod:`data_gen.curate.pipeline`."""

from dasi.splits import heldout_split
from data_gen.curate.config import CurateConfig
from data_gen.curate.pipeline import run

__all__ = ["CurateConfig", "assign_splits", "run"]


def assign_splits(docs: list[dict], fraction: float) -> None:
    """Set ``split`` on an in-memory list with :func:`dasi.splits.heldout_split` (at least one
    held-out document per language): for test fixtures; the stage splits by hash per document."""
    _, heldout = heldout_split(docs, lambda d: d["lang"], lambda d: d["doc_id"], fraction)
    held_ids = {d["doc_id"] for d in heldout}
    for d in docs:
        d["split"] = "heldout" if d["doc_id"] in held_ids else "train"
