"""Output folders that survive interruption (DVC ``persist: true``) but never serve stale work.

``_state.json`` in the folder holds the fingerprint of everything that shapes its content; a
stage that finds another fingerprint clears the folder before starting, so resuming only ever
continues the same inputs and config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from dasi.atomic import write_json
from dasi.provenance import sha256_text

STATE_FILE = "_state.json"


def fingerprint(*parts: Any) -> str:
    return sha256_text(json.dumps(parts, sort_keys=True, default=str))


def prepare_resumable_dir(out_dir: Path, fp: str, log: Any) -> bool:
    """Make ``out_dir`` hold only work for fingerprint ``fp``; returns whether earlier work stays."""
    out_dir = Path(out_dir)
    state = out_dir / STATE_FILE
    kept = False
    if out_dir.exists():
        old = json.loads(state.read_text())["fingerprint"] if state.exists() else None
        if old != fp:
            if any(out_dir.iterdir()):
                log.event("clear_stale_output", path=str(out_dir), previous_fingerprint=old,
                          fingerprint=fp)
            shutil.rmtree(out_dir)
        else:
            kept = True
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(state, {"fingerprint": fp})
    return kept
