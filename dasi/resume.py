"""Output folders that survive interruption (DVC ``persist: true``) but never serve stale work.

``_state.json`` in the folder holds the fingerprint of everything that shapes its content and
whether the work finished. A stage clears the folder before starting when it finds another
fingerprint (resuming only ever continues the same inputs and config) or a finished run (DVC
re-runs a stage only when asked or when something changed, so finished work is redone, never
silently reused); an unfinished run of the same fingerprint is resumed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dasi.atomic import write_json
from dasi.provenance import sha256_text

STATE_FILE = "_state.json"


def fingerprint(*parts: Any) -> str:
    return sha256_text(json.dumps(parts, sort_keys=True, default=str))


def prepare_resumable_dir(out_dir: Path, fp: str, log: Any,
                          finished: Callable[[Path], bool] | None = None) -> bool:
    """Make ``out_dir`` hold only unfinished work for fingerprint ``fp``; returns whether
    earlier work stays (to be resumed). ``finished`` recognises finished work from the files
    themselves (a run cut off after its last write but before :func:`mark_complete`)."""
    out_dir = Path(out_dir)
    state_file = out_dir / STATE_FILE
    kept = False
    if out_dir.exists():
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        if state.get("fingerprint") != fp:
            if any(out_dir.iterdir()):
                log.event("clear_stale_output", path=str(out_dir),
                          previous_fingerprint=state.get("fingerprint"), fingerprint=fp)
            shutil.rmtree(out_dir)
        elif state.get("complete") or (finished is not None and finished(out_dir)):
            log.event("redo_finished_output", path=str(out_dir), fingerprint=fp)
            shutil.rmtree(out_dir)
        else:
            kept = True
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(state_file, {"fingerprint": fp, "complete": False})
    return kept


def mark_complete(out_dir: Path) -> None:
    """Record that the work in ``out_dir`` finished (call last)."""
    state_file = Path(out_dir) / STATE_FILE
    state = json.loads(state_file.read_text())
    write_json(state_file, {**state, "complete": True})
