"""Versioned file formats that stages exchange. Parquet files carry ``dasi.format`` metadata
(``<name>/<version>``) and readers refuse a file of another format or version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dasi.atomic import atomic_path

FORMAT_KEY = b"dasi.format"

SCHEMAS: dict[str, tuple[int, pa.Schema]] = {
    # Seed documents: natural text the pipeline starts from.
    "documents": (1, pa.schema([
        ("doc_id", pa.string()), ("source", pa.string()), ("lang", pa.string()),
        ("text", pa.string()), ("n_chars", pa.int64()), ("origin", pa.string()),
        ("license", pa.string()),
    ])),
    # Generation requests: what one teacher is given (a document head to continue, or one user
    # turn), built from a template over a seed document (purpose pretrain) or an instruction (sft).
    "requests": (2, pa.schema([
        ("request_id", pa.string()), ("purpose", pa.string()), ("lang", pa.string()),
        ("style", pa.string()), ("teacher", pa.string()), ("teacher_kind", pa.string()),
        ("template_id", pa.string()), ("template_version", pa.int32()),
        ("template_hash", pa.string()), ("audience", pa.string()), ("topic", pa.string()),
        ("seed_doc_id", pa.string()), ("instruction", pa.string()), ("prompt", pa.string()),
        ("head", pa.string()), ("stop", pa.list_(pa.string())), ("max_new_tokens", pa.int32()),
    ])),
    # Teacher output with full per-record provenance. ``text`` is the document (head +
    # completion for a base teacher), ``completion`` what the teacher wrote.
    "generated": (2, pa.schema([
        ("request_id", pa.string()), ("purpose", pa.string()), ("lang", pa.string()),
        ("style", pa.string()), ("text", pa.string()), ("completion", pa.string()),
        ("template_id", pa.string()), ("template_version", pa.int32()),
        ("template_hash", pa.string()), ("seed_doc_id", pa.string()), ("instruction", pa.string()),
        ("teacher", pa.string()), ("teacher_id", pa.string()), ("teacher_revision", pa.string()),
        ("teacher_weights_hash", pa.string()), ("engine", pa.string()),
        ("engine_version", pa.string()), ("sampling", pa.string()), ("seed", pa.int64()),
        ("prompt_tokens", pa.int32()), ("completion_tokens", pa.int32()),
        ("finish_reason", pa.string()), ("stop_reason", pa.string()), ("task", pa.int32()),
        ("shard", pa.int32()),
    ])),
    # Curated training/held-out text, natural and synthetic together.
    "curated": (1, pa.schema([
        ("doc_id", pa.string()), ("source", pa.string()), ("kind", pa.string()),
        ("lang", pa.string()), ("text", pa.string()), ("n_chars", pa.int64()),
        ("split", pa.string()), ("provenance", pa.string()),
    ])),
    # Chats for SFT (instruct/chats.py validates them): messages is a JSON list of
    # {"role", "content"}; provenance a JSON object or null.
    "chats": (1, pa.schema([
        ("schema", pa.string()), ("id", pa.string()), ("lang", pa.string()),
        ("source", pa.string()), ("messages", pa.string()), ("provenance", pa.string()),
    ])),
}


class FormatError(ValueError):
    pass


def format_tag(kind: str) -> str:
    version, _ = SCHEMAS[kind]
    return f"{kind}/{version}"


def to_table(rows: list[dict[str, Any]], kind: str) -> pa.Table:
    _, schema = SCHEMAS[kind]
    table = pa.Table.from_pylist(rows, schema=schema)
    return table.replace_schema_metadata({FORMAT_KEY: format_tag(kind).encode()})


def write_parquet(path: Path, rows: list[dict[str, Any]], kind: str,
                  row_group_size: int | None = None) -> int:
    """Atomically write ``rows`` as a ``kind`` Parquet file (``row_group_size``: rows per group,
    for readers that take a few rows); returns the row count."""
    table = to_table(rows, kind)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size)
    return table.num_rows


def _check_schema(path: Path, schema: pa.Schema, kind: str) -> None:
    found = (schema.metadata or {}).get(FORMAT_KEY, b"<none>").decode()
    if found != format_tag(kind):
        raise FormatError(f"{path}: format {found!r}, expected {format_tag(kind)!r}")


def check_format(path: Path, kind: str) -> None:
    """Refuse a file of another format or version, reading only its schema."""
    _check_schema(path, pq.read_schema(path), kind)


def read_parquet(path: Path | list[Path], kind: str) -> pa.Table:
    """Read one file or several shards of ``kind``, refusing other formats or versions."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    tables = []
    for p in paths:
        table = pq.read_table(p)
        _check_schema(p, table.schema, kind)
        tables.append(table)
    if not tables:
        return to_table([], kind)
    return pa.concat_tables(tables)
