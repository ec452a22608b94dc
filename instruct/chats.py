"""Chat records for instruction tuning: the format, its readers/writers, and the held-out split.

One chat (format ``dasi.chat/1``), as a JSONL line or a Parquet row::

    {"schema": "dasi.chat/1", "id": "seed-ko-001", "lang": "ko" | "en",
     "source": "instruct/seed_chats@v1",
     "messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}

``messages`` must contain at least one assistant turn (the only turns that carry loss) and no
empty content. In Parquet (the ``chats`` format of :mod:`dasi.formats`), ``messages`` is a JSON
string of that list. Teacher-made chats (the ``sft-data`` stage) use the same format and reach
the ``sft`` stage as ``--extra-chats``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from dasi.formats import read_parquet, write_parquet
from dasi.splits import heldout_split
from dasi.strict import StrictModel

SCHEMA = "dasi.chat/1"
SEED_FILE = Path(__file__).parent / "data" / "seed_chats.jsonl"


class Message(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class Chat(StrictModel):
    schema_: Literal["dasi.chat/1"] = Field(SCHEMA, alias="schema")
    id: str = Field(min_length=1)
    lang: Literal["ko", "en"]
    source: str
    messages: list[Message] = Field(min_length=2)
    provenance: str | None = Field(None, description="JSON: how a generated chat was made")

    @field_validator("messages")
    @classmethod
    def _has_assistant(cls, v: list[Message]) -> list[Message]:
        if not any(m.role == "assistant" for m in v):
            raise ValueError("a chat needs at least one assistant turn")
        return v

    def as_messages(self) -> list[dict[str, str]]:
        return [m.model_dump() for m in self.messages]


class ChatFormatError(ValueError):
    pass


def _parse(rec: dict[str, Any], where: str) -> Chat:
    if isinstance(rec.get("messages"), str):
        rec = {**rec, "messages": json.loads(rec["messages"])}
    try:
        return Chat.model_validate(rec)
    except ValidationError as e:
        raise ChatFormatError(f"{where}: not a {SCHEMA} chat: {e.errors()[0]['msg']}") from None


def read_chats(path: Path) -> list[Chat]:
    """Read a ``.jsonl`` or ``.parquet`` chat file; any bad record raises ChatFormatError."""
    path = Path(path)
    if path.suffix == ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        chats = [_parse(json.loads(line), f"{path}:{i}") for i, line in enumerate(lines, 1) if line.strip()]
    elif path.suffix == ".parquet":
        table = read_parquet(path, "chats")
        chats = [_parse(r, f"{path}:row {i}") for i, r in enumerate(table.to_pylist())]
    else:
        raise ChatFormatError(f"{path}: expected a .jsonl or .parquet chat file")
    ids = [c.id for c in chats]
    if len(set(ids)) != len(ids):
        raise ChatFormatError(f"{path}: duplicate chat ids")
    return chats


def write_chats(path: Path, chats: Iterable[Chat]) -> int:
    """Atomically write chats as Parquet (messages as JSON strings); returns the count."""
    rows = [{"schema": SCHEMA, "id": c.id, "lang": c.lang, "source": c.source,
             "messages": json.dumps(c.as_messages(), ensure_ascii=False),
             "provenance": c.provenance} for c in chats]
    return write_parquet(path, rows, "chats")


def split_heldout(chats: list[Chat], fraction: float) -> tuple[list[Chat], list[Chat]]:
    """Deterministic (train, heldout) split per language: :func:`dasi.splits.heldout_split`."""
    return heldout_split(chats, lambda c: c.lang, lambda c: c.id, fraction)
