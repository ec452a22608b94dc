"""Decontamination in the curate passes: an index of the word n-grams of every evaluation item
and every held-out document (built in its own one-task pass, after pass 1 has tagged the split),
then a filter over the training documents (held-out ones are what the index holds)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data_gen.curate.config import CurateConfig
from data_gen.decontam import DecontaminationFilter, NgramIndex, evaluation_items

REPO = Path(__file__).resolve().parents[2]


def resolved_tasks(tasks: list) -> list:
    """Local task files as absolute paths (relative ones: from the cwd, else the repository)."""
    out = []
    for t in tasks:
        if t.source == "local" and not Path(t.local_file).is_absolute():
            path = Path(t.local_file) if Path(t.local_file).exists() else REPO / t.local_file
            t = t.model_copy(update={"local_file": str(path.resolve())})
        out.append(t)
    return out


def evaluation_files(tasks: list) -> list[Path]:
    return [Path(t.local_file) for t in resolved_tasks(tasks) if t.source == "local"]


class BuildIndex(PipelineStep):
    """Indexes the evaluation items, then the held-out documents of ``<filtered>/*.parquet``
    (id ``heldout/<doc_id>``), and saves the index atomically to ``index_file``."""

    type = "🧪 - DECONT"
    name = "n-gram index"

    def __init__(self, tasks: list, filtered: Path, index_file: Path, n: int):
        super().__init__()
        self.tasks, self.filtered, self.index_file, self.n = tasks, str(filtered), str(index_file), n

    def heldout(self):
        for path in sorted(Path(self.filtered).glob("*.parquet")):
            parquet = pq.ParquetFile(path)
            for group in range(parquet.metadata.num_row_groups):
                table = parquet.read_row_group(group, columns=["doc_id", "text", "split"])
                table = table.filter(pc.equal(table.column("split"), "heldout"))
                ids, texts = table.column("doc_id").to_pylist(), table.column("text").to_pylist()
                yield from zip(ids, texts, strict=True)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        index = NgramIndex(n=self.n, min_words=min(8, self.n))
        for item_id, text in evaluation_items(self.tasks):
            self.stat_update("eval_indexed" if index.add(item_id, text) else "eval_too_short")
        for doc_id, text in self.heldout():
            added = index.add(f"heldout/{doc_id}", text)
            self.stat_update("heldout_indexed" if added else "heldout_too_short")
        path = Path(self.index_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        index.save(tmp)
        os.replace(tmp, path)
        return
        yield  # a generator step


class TrainDecontamination(DecontaminationFilter):
    """The decontamination filter for training documents; held-out ones pass (they are indexed)."""

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return doc.metadata["split"] == "heldout" or super().filter(doc)


def decontam_steps(cfg: CurateConfig, tasks: list, work: Path) -> tuple[list[PipelineStep], PipelineStep]:
    index_file = work / "decontam" / "index.npz"
    build = BuildIndex(resolved_tasks(tasks), work / "filtered", index_file, cfg.decontam_ngram)
    return [build], TrainDecontamination(str(index_file), work / "reports" / "decontamination")
