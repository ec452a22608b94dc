"""Where seed documents come from: konlpy's bundled Korean corpora, the Python standard
library's source as code, and datasets by hub id (or local files) through ``datasets``."""

from __future__ import annotations

import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PositiveInt, field_validator

from dasi.strict import StrictModel


class _Source(StrictModel):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    lang: Literal["ko", "en", "code"]
    max_chars_per_doc: PositiveInt = 2000
    max_docs: PositiveInt | None = None
    license: str = "unknown"


class KonlpySource(_Source):
    type: Literal["konlpy"]
    corpus: Literal["kolaw", "kobill"]


class StdlibSource(_Source):
    type: Literal["python_stdlib"]
    include: list[str] = Field(min_length=1, description="globs relative to the stdlib folder")
    exclude: list[str] = Field(default_factory=list, description="globs to leave out (e.g. test data)")


class PydocTopicsSource(_Source):
    """English prose: the Python reference manual topics that ship with every Python."""

    type: Literal["pydoc_topics"]


# datasets' packaged builders: a ``path`` of this name reads ``data_files``, not the hub.
BUILDERS = frozenset({"json", "parquet", "csv", "text", "arrow"})


class HubSource(_Source):
    type: Literal["hub"]
    path: str = Field(description="hub dataset id, a builder name (json, parquet) or a local folder")
    revision: str | None = Field(None, description="hub commit (40 hex); required for a hub id")
    config_name: str | None = None
    data_dir: str | None = Field(None, description="folder inside the dataset (e.g. a language)")
    data_files: list[str] | None = None
    split: str = "train"
    text_field: str = "text"
    streaming: bool = Field(False, description="read rows as they download (terabyte sources)")

    @field_validator("revision")
    @classmethod
    def _pinned(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-f]{40}", v):
            raise ValueError(f"revision {v!r}: pin a hub dataset to a 40-hex commit")
        return v

    def is_hub_id(self) -> bool:
        return self.path not in BUILDERS and not Path(self.path).exists()


SourceConfig = Annotated[
    KonlpySource | StdlibSource | PydocTopicsSource | HubSource, Field(discriminator="type")
]


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Split on line boundaries into pieces of at most ``max_chars`` (a longer line is cut)."""
    chunks: list[str] = []
    current = ""
    for line in text.splitlines(keepends=True):
        while len(line) > max_chars:
            if current:
                chunks.append(current)
                current = ""
            chunks.append(line[:max_chars])
            line = line[max_chars:]
        if len(current) + len(line) > max_chars:
            chunks.append(current)
            current = ""
        current += line
    if current.strip():
        chunks.append(current)
    return [c.strip() for c in chunks if c.strip()]


def _konlpy_files(src: KonlpySource) -> Iterator[tuple[str, str]]:
    from konlpy.corpus import kobill, kolaw

    corpus = {"kolaw": kolaw, "kobill": kobill}[src.corpus]
    for fileid in sorted(corpus.fileids()):
        yield f"konlpy:{src.corpus}/{fileid}", corpus.open(fileid).read()


def _stdlib_files(src: StdlibSource) -> Iterator[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    excluded = {p for pattern in src.exclude for p in root.glob(pattern)}
    files = sorted({p for pattern in src.include for p in root.glob(pattern) if p.is_file()} - excluded)
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:  # the stdlib ships a few Latin-1 test files
            raise ValueError(f"seeds.sources[{src.name}]: {rel} is not UTF-8 ({e.reason}); "
                             f"add it to the source's exclude globs") from None
        yield f"stdlib:{rel}", text


def _pydoc_topics(src: PydocTopicsSource) -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"pydoc_data:{name}", topics[name]


def _hub_rows(src: HubSource) -> Iterator[tuple[str, str]]:
    import datasets

    if src.is_hub_id() and src.revision is None:
        raise ValueError(f"seeds.sources[{src.name}].revision: pin hub dataset {src.path} to a 40-hex "
                         f"commit (the data must not change under a re-run)")
    ds = datasets.load_dataset(
        src.path, src.config_name, split=src.split, data_dir=src.data_dir, data_files=src.data_files,
        revision=src.revision, streaming=src.streaming,
    )
    for i, row in enumerate(ds):
        yield f"hub:{src.path}/{src.split}/{i}", row[src.text_field]


def iter_documents(src: _Source) -> Iterator[dict]:
    """Yield documents in the ``documents`` format, chunked, in a deterministic order."""
    reader = {"konlpy": _konlpy_files, "python_stdlib": _stdlib_files,
              "pydoc_topics": _pydoc_topics, "hub": _hub_rows}
    n = 0
    for origin, text in reader[src.type](src):
        for j, chunk in enumerate(chunk_text(text, src.max_chars_per_doc)):
            if src.max_docs is not None and n >= src.max_docs:
                return
            yield {
                "doc_id": f"{src.name}-{n:06d}",
                "source": src.name,
                "lang": src.lang,
                "text": chunk,
                "n_chars": len(chunk),
                "origin": f"{origin}#{j}",
                "license": src.license,
            }
            n += 1
