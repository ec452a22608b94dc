"""Pass-1 reader over the seed documents and the verified generated shards, and the reader of the
per-task shards that later passes re-read.

The input is split among tasks by Parquet row group: the row groups of every input file, in file
order, are dealt round-robin (task ``r`` of ``n`` takes groups ``r, r+n, ...``), so the split is
the same on every run and a task holds one row group at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from dasi.formats import check_format

SEED_COLUMNS = ["doc_id", "source", "lang", "text", "origin", "license"]


def seed_document(r: dict) -> Document:
    provenance = json.dumps({"origin": r["origin"], "license": r["license"]}, ensure_ascii=False)
    return Document(text=r["text"], id=r["doc_id"], metadata={
        "source": r["source"], "kind": "natural", "lang": r["lang"], "provenance": provenance})


def synthetic_document(r: dict) -> Document:
    """A generated record as a document; the teacher's raw completion is left out of the
    provenance since the text holds it."""
    text = r.pop("text")
    r.pop("completion")
    return Document(text=text, id=f"syn-{r['request_id']}", metadata={
        "source": f"synthetic_{r['lang']}", "kind": "synthetic", "lang": r["lang"],
        "provenance": json.dumps(r, ensure_ascii=False)})


def row_groups(path: Path) -> range:
    return range(pq.ParquetFile(path).metadata.num_row_groups)


class SourceReader(PipelineStep):
    """Seed documents (``documents`` format) then generated records with purpose ``pretrain``
    (``generated`` format; pass the shards :func:`data_gen.generated.verified_shards` checked)."""

    type = "📖 - READER"
    name = "seeds + generated"

    def __init__(self, seeds_file: Path, generated_shards: list[Path]):
        super().__init__()
        self.files = [(str(Path(seeds_file).resolve()), "documents")]
        self.files += [(str(Path(p).resolve()), "generated") for p in generated_shards]

    def units(self) -> list[tuple[str, str, int]]:
        return [(path, kind, g) for path, kind in self.files for g in row_groups(Path(path))]

    def read(self, path: str, kind: str, group: int) -> Iterator[Document]:
        parquet = pq.ParquetFile(path)
        if kind == "documents":
            yield from map(seed_document, parquet.read_row_group(group, columns=SEED_COLUMNS).to_pylist())
            return
        table = parquet.read_row_group(group)
        table = table.filter(pc.equal(table.column("purpose"), "pretrain"))
        yield from map(synthetic_document, table.to_pylist())

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for path, kind in self.files:
            check_format(Path(path), kind)
        for path, kind, group in self.units()[rank::world_size]:
            for doc in self.read(path, kind, group):
                self.stat_update(f"input/{doc.metadata['source']}")
                yield doc


class ShardReader(PipelineStep):
    """Task ``r`` reads ``<folder>/<r:05d>.parquet`` (``curated`` format) row group by row group,
    in order: the documents, in the order, that the task wrote in an earlier pass."""

    type = "📖 - READER"
    name = "curated shard"

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = str(Path(folder).resolve())

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        path = Path(self.folder) / f"{rank:05d}.parquet"
        check_format(path, "curated")
        parquet = pq.ParquetFile(path)
        for group in range(parquet.metadata.num_row_groups):
            for r in parquet.read_row_group(group).to_pylist():
                yield Document(text=r["text"], id=r["doc_id"], metadata={
                    k: r[k] for k in ("source", "kind", "lang", "split", "provenance")})
