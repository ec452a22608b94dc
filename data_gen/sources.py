"""Where seed documents come from: konlpy's bundled Korean corpora, the Python standard
library's source as code, and datasets by hub id (or local files) through ``datasets``."""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PositiveInt

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


class PydocTopicsSource(_Source):
    """English prose: the Python reference manual topics that ship with every Python."""

    type: Literal["pydoc_topics"]


class HubSource(_Source):
    type: Literal["hub"]
    path: str = Field(description="hub dataset id, a builder name (json, parquet) or a local folder")
    config_name: str | None = None
    data_files: list[str] | None = None
    split: str = "train"
    text_field: str = "text"


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
    files = sorted({p for pattern in src.include for p in root.glob(pattern) if p.is_file()})
    for path in files:
        yield f"stdlib:{path.relative_to(root).as_posix()}", path.read_text(encoding="utf-8")


def _pydoc_topics(src: PydocTopicsSource) -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"pydoc_data:{name}", topics[name]


def _hub_rows(src: HubSource) -> Iterator[tuple[str, str]]:
    import datasets

    ds = datasets.load_dataset(
        src.path, src.config_name, split=src.split, data_files=src.data_files
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
