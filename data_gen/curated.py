"""The curated dataset on disk: sharded Parquet plus a manifest, read shard by shard.

Layout of ``data/curated`` (written by ``curate``)::

    documents/00000.parquet ...   format ``curated/1``, one shard per curate task, row groups of
                                  ROW_GROUP documents; columns as SCHEMAS["curated"]
    _manifest.json                format ``curated-manifest/1``: every shard's file (relative),
                                  rows, bytes and sha256 (null in ``size`` mode), rows per split
                                  and language; written last

Readers take the shard list from the manifest and check each shard first (``verify``: sha256 or
size), so an edited, truncated, missing or stray shard stops the stage with one line naming the
file. They stream: nothing here holds more than one record batch of a shard in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dasi.atomic import write_json
from dasi.formats import check_format
from dasi.integrity import FileRecord, IntegrityError, VerifyMode, check, record

MANIFEST_FILE = "_manifest.json"
MANIFEST_FORMAT = "curated-manifest/1"
SHARD_GLOB = "documents/*.parquet"
ROW_GROUP = 1024
FIX = "Re-run curate (dvc repro -f curate, or dvc checkout data/curated)"


def write_manifest(curated_dir: Path, shards: list[Path], counts: dict[str, dict[str, int]],
                   mode: VerifyMode = "sha256") -> dict:
    """Record ``shards`` (paths inside ``curated_dir``) and ``counts`` ({split: {lang: rows}});
    call when every shard is final."""
    curated_dir = Path(curated_dir)
    entries = []
    for path in sorted(shards):
        rec = record(path, mode)
        entries.append({"file": path.relative_to(curated_dir).as_posix(),
                        "rows": pq.ParquetFile(path).metadata.num_rows,
                        "bytes": rec.bytes, "sha256": rec.sha256})
    manifest = {"format": MANIFEST_FORMAT, "verify": mode, "shards": entries,
                "rows": sum(e["rows"] for e in entries),
                "rows_by_split": {s: dict(sorted(v.items())) for s, v in sorted(counts.items())}}
    write_json(curated_dir / MANIFEST_FILE, manifest)
    return manifest


def read_manifest(curated_dir: Path) -> dict:
    manifest_file = Path(curated_dir) / MANIFEST_FILE
    if not manifest_file.is_file():
        raise IntegrityError(f"{manifest_file}: missing; curate writes it when every shard is done. {FIX}")
    manifest = json.loads(manifest_file.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise IntegrityError(f"{manifest_file}: format {manifest.get('format')!r}, readable: "
                             f"{MANIFEST_FORMAT}")
    return manifest


def curated_shards(curated_dir: Path, verify: VerifyMode = "sha256") -> list[Path]:
    """The manifest's shards in its order, each checked (``verify``) and format-checked, after
    making sure no unlisted shard lies in the folder."""
    curated_dir = Path(curated_dir)
    manifest = read_manifest(curated_dir)
    listed = [(curated_dir / s["file"], FileRecord(bytes=s["bytes"], sha256=s["sha256"]))
              for s in manifest["shards"]]
    stray = sorted(set(curated_dir.glob(SHARD_GLOB)) - {p for p, _ in listed})
    if stray:
        raise IntegrityError(f"{stray[0]}: a shard not listed in {curated_dir / MANIFEST_FILE}; "
                             f"nothing was changed. {FIX}")
    check(listed, verify, curated_dir / MANIFEST_FILE, FIX)
    for path, _ in listed:
        check_format(path, "curated")
    return [p for p, _ in listed]


def iter_batches(curated_dir: Path, columns: list[str] | None = None, split: str | None = None,
                 batch_size: int = ROW_GROUP, verify: VerifyMode = "sha256") -> Iterator[pa.RecordBatch]:
    """Record batches of every shard in manifest order (rows of ``split`` only, when given)."""
    read_cols = None if columns is None else sorted(set(columns) | ({"split"} if split else set()))
    for path in curated_shards(curated_dir, verify):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=read_cols):
            if split is not None:
                batch = batch.filter(pc.equal(batch.column("split"), split))
            if columns is not None:
                batch = batch.select(columns)
            if batch.num_rows:
                yield batch


def iter_docs(curated_dir: Path, columns: list[str] | None = None, split: str | None = None,
              verify: VerifyMode = "sha256") -> Iterator[dict]:
    """One dict per document, streamed (see :func:`iter_batches`)."""
    for batch in iter_batches(curated_dir, columns, split, verify=verify):
        yield from batch.to_pylist()
