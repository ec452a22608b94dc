"""Sizes and sha256 of files recorded when they are written and checked before they are used.

Packed data records them in the pack manifest, checkpoints in ``checksums.json`` inside each
``iter_*`` folder. A difference stops the stage with :class:`IntegrityError`: one line naming
the file and what is wrong; the checking code never changes or deletes anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import NonNegativeInt

from dasi.provenance import sha256_file
from dasi.strict import StrictModel

# sha256 reads every byte (catches any edit); size only stats (catches truncation and growth):
# the choice for multi-terabyte data and 150 GB checkpoints, where hashing takes too long.
VerifyMode = Literal["sha256", "size"]


class IntegrityError(RuntimeError):
    """A file is missing or differs from the size/sha256 recorded for it."""


class FileRecord(StrictModel):
    bytes: NonNegativeInt
    sha256: str | None = None  # absent when written in ``size`` mode


def record(path: Path, mode: VerifyMode = "sha256") -> FileRecord:
    path = Path(path)
    return FileRecord(bytes=path.stat().st_size, sha256=sha256_file(path) if mode == "sha256" else None)


def check(files: Iterable[tuple[Path, FileRecord]], mode: VerifyMode, source: Path, fix: str) -> None:
    """Raise :class:`IntegrityError` for the first file that differs from its record in ``source``.

    Every size is checked before any hash, so a truncated file is reported without reading the
    others. ``fix`` says how to get a good copy back."""
    files = list(files)
    tail = f"(recorded in {source}); nothing was changed. {fix}"
    for path, rec in files:
        if not Path(path).is_file():
            raise IntegrityError(f"{path}: missing {tail}")
        size = Path(path).stat().st_size
        if size != rec.bytes:
            raise IntegrityError(f"{path}: size {size} bytes, expected {rec.bytes} {tail}")
    if mode == "size":
        return
    for path, rec in files:
        if rec.sha256 is not None and sha256_file(path) != rec.sha256:
            raise IntegrityError(f"{path}: sha256 differs from the one {tail}")
