"""Calling MaxText: ``pretrain_tpu/maxtext_side.py`` under the MaxText venv's interpreter.

dasi's own environment never imports jax or maxtext. Each call runs one sub-command of
``maxtext_side.py`` as a subprocess whose output streams to the console (MaxText's
``completed step`` lines are the progress) and is kept in the run log's folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pretrain_tpu.config import PretrainTpuConfig

SIDE = Path(__file__).resolve().with_name("maxtext_side.py")
ENV_PYTHON = "DASI_MAXTEXT_PYTHON"
SETUP = "bash scripts/setup.sh (it makes .venv-maxtext; DASI_MAXTEXT=0 skips it)"


class MaxTextFailed(RuntimeError):
    pass


def python(cfg: PretrainTpuConfig) -> Path:
    """The MaxText venv's interpreter; a missing one stops the stage before anything is written."""
    path = Path(os.environ.get(ENV_PYTHON) or cfg.python)
    if not path.exists():
        raise FileNotFoundError(
            f"pretrain_tpu.python = {str(path)!r} does not exist: run {SETUP}, or set {ENV_PYTHON}"
        )
    return path


def environment(cfg: PretrainTpuConfig) -> dict[str, str]:
    """What keeps MaxText on this machine's files: no hub, and a non-empty XLA_FLAGS (with it
    empty, MaxText points XLA's HLO dumps at the system temp folder on every run)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="2")
    env["XLA_FLAGS"] = env.get("XLA_FLAGS") or "--xla_cpu_enable_fast_math=false"
    if cfg.hardware == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    return env


def command(cfg: PretrainTpuConfig, *args: str) -> list[str]:
    return [str(python(cfg)), str(SIDE), *args]


def _lines(path: Path | None) -> int:
    try:
        with open(path, encoding="utf-8") as f:  # type: ignore[arg-type]
            return sum(1 for _ in f)
    except (FileNotFoundError, TypeError):
        return 0


def run(
    cfg: PretrainTpuConfig,
    args: list[str],
    log: Any | None,
    transcript: Path,
    progress: tuple[Path, int] | None = None,
) -> None:
    """Run ``maxtext_side.py <args>``, its output kept in ``transcript``; ``progress`` is (metrics
    file, total steps): a bar follows the steps MaxText writes there."""
    from tqdm import tqdm

    cmd = command(cfg, *args)
    if log is not None:
        log.event("maxtext_call", argv=cmd, transcript=str(transcript))
    with open(transcript, "a", encoding="utf-8") as sink:
        proc = subprocess.Popen(cmd, env=environment(cfg), stdout=sink, stderr=subprocess.STDOUT)
        bar = (
            tqdm(
                total=progress[1],
                desc=f"maxtext {args[0]}",
                unit="step",
                mininterval=1 if sys.stderr.isatty() else 30,
            )
            if progress
            else None
        )
        while proc.poll() is None:
            time.sleep(1)
            if bar is not None:
                bar.update(min(_lines(progress[0]), progress[1]) - bar.n)  # type: ignore[index]
        if bar is not None:
            bar.close()
    if proc.returncode:
        tail = "".join(Path(transcript).read_text(encoding="utf-8", errors="replace").splitlines(True)[-30:])
        raise MaxTextFailed(
            f"maxtext_side.py {args[0]} exited with {proc.returncode} "
            f"(whole output: {transcript}); last lines:\n{tail}"
        )
