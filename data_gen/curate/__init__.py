"""Stage ``curate``: natural + synthetic documents filtered, deduplicated (exact and MinHash),
decontaminated and split, as datatrove passes; see :mod:`data_gen.curate.pipeline`."""

from data_gen.curate.config import CurateConfig
from data_gen.curate.pipeline import run

__all__ = ["CurateConfig", "run"]
