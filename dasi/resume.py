"""Output folders that survive interruption (DVC ``persist: true``), never serve stale work and
never lose work silently.

``_state.json`` in the folder holds the fingerprint of everything that shapes its content, part
by part. Work of the same fingerprint is resumed (or reused when finished); work of another
fingerprint stops the stage with :class:`FingerprintMismatch`, which names the parts that changed
and deletes nothing. Only :func:`restart`, called on the user's explicit request, deletes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from dasi.atomic import write_json
from dasi.provenance import sha256_text

STATE_FILE = "_state.json"


class FingerprintMismatch(RuntimeError):
    """The output folder holds work made from other inputs; nothing was deleted."""


def fingerprint(*parts: Any) -> str:
    return sha256_text(json.dumps(parts, sort_keys=True, default=str))


def read_state(out_dir: Path) -> dict[str, Any]:
    state_file = Path(out_dir) / STATE_FILE
    return json.loads(state_file.read_text()) if state_file.is_file() else {}


def changed_parts(out_dir: Path, parts: dict[str, str]) -> list[str]:
    """Names of the parts whose fingerprint differs from the one recorded in ``out_dir``
    (every part when none was recorded)."""
    old = read_state(out_dir).get("parts", {})
    return [name for name, value in parts.items() if old.get(name) != value]


def check_fingerprint(out_dir: Path, parts: dict[str, str], work: str | None, how_to_restart: str) -> None:
    """Raise :class:`FingerprintMismatch` when ``out_dir`` holds ``work`` (a description, None
    when it holds nothing worth keeping) made from other ``parts``."""
    changed = changed_parts(out_dir, parts)
    if work and changed:
        raise FingerprintMismatch(
            f"{out_dir} holds {work} made from other inputs (changed: {', '.join(changed)}); "
            f"nothing was deleted. To start over: {how_to_restart} (deletes them), or move the folder away")


def record_fingerprint(out_dir: Path, parts: dict[str, str]) -> None:
    """Record ``parts`` as what the work in ``out_dir`` is made from (call after the check)."""
    state = {"fingerprint": fingerprint(parts), "parts": parts}
    if read_state(out_dir) != state:  # a resume leaves the folder as it was
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_json(Path(out_dir) / STATE_FILE, state)


def restart(out_dir: Path, log: Any, **deleted: Any) -> None:
    """Delete ``out_dir`` because the user asked to start over (a flag or an environment
    variable); the event says what was deleted."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    files = [p for p in out_dir.rglob("*") if p.is_file()]
    log.event("restart", path=str(out_dir), files=len(files), bytes=sum(p.stat().st_size for p in files),
              **deleted)
    shutil.rmtree(out_dir)  # the explicit request to start over
