"""Run untrusted Python (model-written code) in a sandbox.

Each program runs in its own process under bubblewrap (``bwrap``): new user, PID, network, IPC and
UTS namespaces (no network: the new network namespace has only its own loopback), the whole file
system mounted read-only except a fresh temporary folder, which is its cwd, HOME and TMPDIR, no
capabilities, a cleared environment. Resource limits are set before ``bwrap`` starts and are
inherited by everything inside: address space (memory), CPU seconds, file size, no core files. A
wall-clock timeout kills ``bwrap``, and with it (``--die-with-parent``, its own PID namespace)
every process the program started. Output goes to files outside the sandbox's folder, capped by
the file-size limit, so a program that prints without end cannot fill the parent's memory.

The enforcement is the kernel's (mount, network and PID namespaces, rlimits), not Python code in
the child that the program could undo. ``bwrap`` is Debian's ``bubblewrap`` (scripts/setup.sh
installs it); it needs root or unprivileged user namespaces.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

OUTPUT_TAIL = 4000  # characters of stdout/stderr kept in an Outcome


class SandboxUnavailable(RuntimeError):
    """bwrap is missing or cannot create its namespaces here: one line for the user."""


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30  # address space; Python itself maps ~30 MB
    file_bytes: int = 16 << 20  # largest file (captured output included) the program may write


@dataclass(frozen=True)
class Outcome:
    status: Literal["passed", "failed", "timeout", "killed"]
    returncode: int  # negative: killed by that signal
    seconds: float
    stdout: str
    stderr: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def bwrap_command(workdir: Path, argv: list[str]) -> list[str]:
    """The ``bwrap`` command line that runs ``argv`` with ``workdir`` as the only writable place."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable("sandbox: bwrap not found; install bubblewrap (apt-get install bubblewrap, "
                                 "as scripts/setup.sh does)")
    w = str(workdir)
    return [
        bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--bind", w, w, "--chdir", w,
        "--clearenv", "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", w,
        "--setenv", "TMPDIR", w, "--setenv", "LANG", "C.UTF-8", "--", *argv,
    ]


def _limiter(limits: Limits):
    def apply() -> None:  # in the child, between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - OUTPUT_TAIL))
        return f.read().decode("utf-8", errors="replace")


def run_python(source: str, limits: Limits = Limits()) -> Outcome:
    """Run ``source`` as a Python program in the sandbox; ``passed`` means exit status 0."""
    check_available()
    with tempfile.TemporaryDirectory(prefix="dasi-sandbox-") as tmp:
        work, out = Path(tmp) / "work", Path(tmp) / "out"  # out: the parent's, not bound inside
        work.mkdir()
        out.mkdir()
        (work / "program.py").write_text(source, encoding="utf-8")
        cmd = bwrap_command(work, [sys.executable, "-I", "-B", "program.py"])
        t0 = time.monotonic()
        with open(out / "stdout", "wb") as so, open(out / "stderr", "wb") as se:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=so, stderr=se,
                                    preexec_fn=_limiter(limits), start_new_session=True)
            try:
                rc, timed_out = proc.wait(timeout=limits.wall_seconds), False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # bwrap; --die-with-parent takes the rest with it
                rc, timed_out = proc.wait(), True
        seconds = time.monotonic() - t0
        if not timed_out and rc > 128:  # bwrap exits 128 + N when its child was killed by signal N
            rc = 128 - rc
        status = "timeout" if timed_out else "passed" if rc == 0 else "killed" if rc < 0 else "failed"
        return Outcome(status, rc, round(seconds, 3), _tail(out / "stdout"), _tail(out / "stderr"))


@cache
def check_available() -> None:
    """Raise :class:`SandboxUnavailable` unless bwrap can build its namespaces here (once per process)."""
    with tempfile.TemporaryDirectory(prefix="dasi-sandbox-check-") as tmp:
        cmd = bwrap_command(Path(tmp), ["/bin/true"])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise SandboxUnavailable(f"sandbox: bwrap cannot run here (exit {proc.returncode}): "
                                 f"{proc.stderr.strip()[:200]} (it needs root or user namespaces)")
