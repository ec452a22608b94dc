"""A datatrove filter base that also counts per source, so the pipeline can report each
filter's drops per source from datatrove's merged stats (``dropped/<source>``)."""

from __future__ import annotations

from abc import abstractmethod

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter


def doc_source(doc: Document) -> str:
    return str(doc.metadata.get("source", "unknown"))


class SourceFilter(BaseFilter):
    """Subclasses set ``reason`` and implement :meth:`keep`; datatrove's ``dropped_<reason>``
    counts stay as they are, ``total/<source>`` and ``dropped/<source>`` are added."""

    reason: str = "filtered"

    @abstractmethod
    def keep(self, doc: Document) -> bool:
        raise NotImplementedError

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        source = doc_source(doc)
        self.stat_update(f"total/{source}")
        if self.keep(doc):
            return True
        self.stat_update(f"dropped/{source}")
        return False, self.reason
