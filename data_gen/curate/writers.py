"""The curated shard writer: one Parquet file per task, written under a temporary name and
renamed when the task's last document is in, so a killed task leaves no partial shard."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from dasi.formats import FORMAT_KEY, SCHEMAS, format_tag
from data_gen.curated import ROW_GROUP


def curated_row(doc: Document) -> dict:
    m = doc.metadata
    return {"doc_id": doc.id, "source": m["source"], "kind": m["kind"], "lang": m["lang"], "text": doc.text,
            "n_chars": len(doc.text), "split": m["split"], "provenance": m["provenance"]}


class ShardWriter(PipelineStep):
    """Writes task ``r``'s documents to ``<folder>/<r:05d>.parquet`` (``curated`` format, row
    groups of ROW_GROUP) and passes them on; counts ``kept/<source>`` (value: UTF-8 bytes) and
    ``split_<split>/<lang>``."""

    type = "💽 - WRITER"
    name = "curated parquet"

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = str(Path(folder).resolve())

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        _, schema = SCHEMAS["curated"]
        schema = schema.with_metadata({FORMAT_KEY: format_tag("curated").encode()})
        path = Path(self.folder) / f"{rank:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        rows: list[dict] = []
        with pq.ParquetWriter(tmp, schema, compression="zstd") as out:
            for doc in data:
                rows.append(curated_row(doc))
                self.stat_update(f"kept/{doc.metadata['source']}", value=len(doc.text.encode("utf-8")))
                self.stat_update(f"split_{doc.metadata['split']}/{doc.metadata['lang']}")
                if len(rows) == ROW_GROUP:
                    out.write_table(pa.Table.from_pylist(rows, schema=schema))
                    rows = []
                yield doc
            if rows:
                out.write_table(pa.Table.from_pylist(rows, schema=schema))
        os.replace(tmp, path)
