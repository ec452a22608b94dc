"""Fault injection: SIGKILL a stage command at seeded random moments, then let it finish; and the
small scripts that stand in for a cluster's commands (``sbatch``, ``sacct``) on PATH."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def seeded_delays(seed: int, n: int, low: float, high: float) -> list[float]:
    """``n`` moments in ``[low, high)`` seconds, the same for the same seed."""
    rng = random.Random(seed)
    return [round(rng.uniform(low, high), 3) for _ in range(n)]


def timed_run(cmd: list[str], **kw) -> float:
    """Run to completion (raising on failure); returns its wall time."""
    t = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert done.returncode == 0, done.stderr[-3000:]
    return time.time() - t


def time_between(cmd: list[str], first: Callable[[], bool], last: Callable[[], bool], **kw) -> float:
    """Run to completion (raising on failure); returns the seconds from when ``first()`` held to
    when ``last()`` did (polled every 10 ms): the window in which a kill lands mid-run on this
    machine, whatever its speed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    marks = []
    for done in (first, last):
        while not done() and proc.poll() is None:
            time.sleep(0.01)
        marks.append(time.time())
    err = proc.communicate()[1]
    assert proc.returncode == 0, err.decode()[-3000:]
    return marks[1] - marks[0]


def kill_then_finish(cmd: list[str], delays: list[float], ready: Callable[[], bool] | None = None,
                     **kw) -> list[bool]:
    """For each delay, start ``cmd`` and SIGKILL its whole process group after that long (the
    run may finish first), counted from when ``ready()`` holds (e.g. a first checkpoint exists:
    how long a run takes to get there depends on the machine's load); then run it to
    completion. Returns which attempts were killed."""
    killed = []
    for delay in delays:
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, **kw)
        while ready is not None and not ready() and proc.poll() is None:
            time.sleep(0.05)
        try:
            proc.wait(timeout=delay)
            killed.append(False)
            assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed.append(True)
        proc.stderr.close()
    timed_run(cmd, **kw)
    return killed


def tree_digest(*roots: Path) -> dict[str, str]:
    """sha256 of every file under the roots (a file root counts as itself), by relative path;
    leftover temp files of a killed write show up as extra entries."""
    out = {}
    for root in roots:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p.relative_to(root.parent))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def executable(path: Path, text: str) -> None:
    """A bash script at ``path`` (first on PATH, it stands in for a cluster command)."""
    path.write_text("#!/bin/bash\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
