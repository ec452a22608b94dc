"""The sandbox that runs model-written code: hostile programs cannot write outside their folder,
reach the network, outlive their limits or take the parent's memory; a correct program passes."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import psutil
import pytest

from evals.sandbox import Limits, run_python

REPO = Path(__file__).resolve().parents[2]
QUICK = Limits(wall_seconds=60, cpu_seconds=30)  # generous: other work shares this machine's 2 cores


def test_correct_program_passes_and_may_write_its_own_folder() -> None:
    out = run_python("import os\nopen('scratch.txt', 'w').write('ok')\n"
                     "assert open('scratch.txt').read() == 'ok'\nprint(os.getcwd())\n", QUICK)
    assert out.passed and out.returncode == 0, out.stderr
    assert "dasi-sandbox-" in out.stdout
    assert not Path(out.stdout.strip()).exists()  # the folder is removed afterwards


@pytest.mark.parametrize("where", ["repo", "tmp", "test_tmp", "home"])
def test_write_outside_the_sandbox_folder_fails(where: str, tmp_path: Path) -> None:
    target = {"repo": REPO, "tmp": Path("/tmp"), "test_tmp": tmp_path, "home": Path.home()}[where]
    path = target / f"dasi-sandbox-escape-{uuid.uuid4().hex}.txt"
    code = f"open({str(path)!r}, 'w').write('escaped')\n"
    out = run_python(code, QUICK)
    assert out.status == "failed" and "Read-only file system" in out.stderr
    assert not path.exists()
    # removing or renaming files is refused too
    victim = tmp_path / "keep.txt"
    victim.write_text("mine")
    out = run_python(f"import os\nos.remove({str(victim)!r})\n", QUICK)
    assert out.status == "failed" and victim.read_text() == "mine"


def test_infinite_loop_is_killed_at_the_wall_limit_with_its_children() -> None:
    marker = f"dasi-sandbox-orphan-{uuid.uuid4().hex}"
    code = ("import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', {marker!r}])\n"
            "while True:\n    time.sleep(0.05)\n")
    out = run_python(code, Limits(wall_seconds=3, cpu_seconds=60))
    assert out.status == "timeout" and out.returncode < 0
    assert 3 <= out.seconds < 30
    survivors = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert survivors == []


def test_busy_loop_is_killed_at_the_cpu_limit() -> None:
    out = run_python("while True:\n    pass\n", Limits(wall_seconds=120, cpu_seconds=1))
    assert out.status == "killed" and out.returncode < 0


def test_memory_limit() -> None:
    out = run_python("x = bytearray(2 << 30)\n",
                     Limits(wall_seconds=60, cpu_seconds=30, memory_bytes=512 << 20))
    assert out.status == "failed" and "MemoryError" in out.stderr


def test_endless_output_is_capped() -> None:
    out = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
                     Limits(wall_seconds=60, cpu_seconds=30, file_bytes=1 << 20))
    assert not out.passed and len(out.stdout) <= 4000


def test_no_network() -> None:
    """A server listening on this machine's loopback is out of reach (the kernel would queue a
    connection from this network namespace even without accept), and the only interface inside
    is the sandbox's own loopback. No address outside this machine is ever tried."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = ("import socket\n"
                "print(sorted(name for _, name in socket.if_nameindex()))\n"
                f"socket.create_connection(('127.0.0.1', {port}), timeout=5)\n")
        out = run_python(code, QUICK)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing connected
    assert out.status == "failed" and "ConnectionRefusedError" in out.stderr
    assert out.stdout.strip() == "['lo']"
    with socket.create_server(("127.0.0.1", 0)) as server:  # the same connection from here succeeds
        socket.create_connection(("127.0.0.1", server.getsockname()[1]), timeout=5).close()
