"""Exact and MinHash near-dedup on datatrove's steps, with a report of what each removed.

Exact: the hash of the normalized text (NFKC, case-folded, whitespace collapsed); among equal
texts a held-out document wins, so a duplicate never takes a text out of the held-out split.
MinHash: datatrove's signature / buckets / cluster / filter steps over natural and synthetic
documents of every task together; one document per cluster stays.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.dedup import ExactDedupSignature
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.writers.jsonl import JsonlWriter
from datatrove.utils.hashing import HashConfig

from data_gen.curate.config import MinhashSection
from data_gen.filters import _WS

HELDOUT_PRIORITY, TRAIN_PRIORITY = 2, 1


def normalized_text(doc: Document) -> str:
    return _WS.sub(" ", unicodedata.normalize("NFKC", doc.text).casefold()).strip()


# datatrove reads the getter's return annotation to pick its hash function: a real type, not a
# string, so it is set here rather than left to ``from __future__ import annotations``.
normalized_text.__annotations__["return"] = str


def heldout_first(doc: Document) -> int:
    return HELDOUT_PRIORITY if doc.metadata["split"] == "heldout" else TRAIN_PRIORITY


# datatrove's xxhash path hands str to xxhash, which since 4.0 takes only bytes; sha1 encodes first.
HASH = HashConfig(precision=64, hash_fc="sha1")


def exact_config() -> ExactDedupConfig:
    return ExactDedupConfig(content_getter=normalized_text, document_priority=heldout_first, hash_config=HASH)


def minhash_config(m: MinhashSection) -> MinhashConfig:
    return MinhashConfig(n_grams=m.n_grams, num_buckets=m.num_buckets, hashes_per_bucket=m.hashes_per_bucket,
                         seed=m.seed, hash_config=HASH)


class ExactSignatureTee(ExactDedupSignature):
    """datatrove's exact-dedup signature step that also passes every document on, so pass 1
    hashes the documents it writes, in the order it writes them, without reading them again."""

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        signatures = []
        for doc_idx, doc in enumerate(data):
            with self.stats.time_stats:
                self.stat_update("total")
                signatures.extend(self.get_hashes(doc, doc_idx))
            yield doc
        self.save_hashes(rank, signatures)


def _report_row(writer: DropReport, doc: Document) -> dict:
    row = {"doc_id": doc.id, "source": doc.metadata["source"], "filter": writer.filter_name}
    if "minhash_cluster_id" in doc.metadata:
        row["cluster"] = doc.metadata["minhash_cluster_id"]
    return row


class DropReport(JsonlWriter):
    """Exclusion writer for datatrove's dedup filters: one JSON line per removed document (id,
    source, cluster), and ``dropped/<source>`` counted in the stats of the filter that owns it
    (``count``: its bound ``stat_update``), since the executor collects only the pipeline's own
    steps' stats."""

    def __init__(self, folder: Path, filter_name: str):
        super().__init__(str(folder), output_filename="${rank}.jsonl", compression=None, adapter=_report_row)
        self.filter_name = filter_name
        self.count = None

    def write(self, document: Document, rank: int = 0, **kwargs) -> None:
        if self.count is not None:
            self.count(f"dropped/{document.metadata['source']}")
        super().write(document, rank, **kwargs)
