"""Fixtures for the pretrain/export tests (packed data and tokenizer come from tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dasi.model_config import ModelConfig
from dasi.runlog import LoggingConfig, RunLog
from pretrain.config import PretrainConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def model_cfg() -> ModelConfig:
    tiny = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    return ModelConfig.model_validate(tiny["model"])


def small_cfg(**kw) -> PretrainConfig:
    base = dict(train_steps=6, micro_batch_size=2, global_batch_size=4, lr=3e-3, min_lr=3e-4,
                warmup_steps=2, eval_interval=3, eval_iters=1, save_interval=3)
    return PretrainConfig.model_validate({**base, **kw})


def runlog(tmp: Path, cfg: PretrainConfig) -> RunLog:
    return RunLog("pretrain", cfg, logging=LoggingConfig(logs_dir=str(tmp / "logs"), wandb=False,
                                                         tensorboard=False))


# -- running the real `dasi` command in a folder of its own -----------------------------------

CLI_PRETRAIN = dict(train_steps=4, micro_batch_size=2, global_batch_size=4, lr=3e-3, min_lr=3e-4,
                    warmup_steps=1, eval_interval=2, eval_iters=1, save_interval=2)


def cli_workspace(root: Path, manifest: Path, pretrain: dict | None = None) -> Path:
    """``root`` set up for ``dasi pack/pretrain/export``: a profile of its own (the tiny model,
    small ``pretrain``, quiet logs), params.yaml and a copy of the packed data in ``packed/``.
    Commands run with ``root`` as working directory and relative paths, as under DVC."""
    import shutil

    tiny = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    profile = {"launcher": "local", "model": tiny["model"], "pack": tiny["pack"],
               "pretrain": pretrain or CLI_PRETRAIN, "export": {},
               "logging": {"logs_dir": "logs", "wandb": False, "tensorboard": False}}
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "w.yaml").write_text(yaml.safe_dump(profile))
    (root / "params.yaml").write_text("profile: w\n")
    shutil.copytree(Path(manifest).parent, root / "packed")
    return root


def dasi(*args: str) -> list[str]:
    return [sys.executable, "-m", "dasi.cli", *args, "--params", "params.yaml", "--profiles", "configs"]


PRETRAIN = ("pretrain", "--packed", "packed/manifest.json", "--out", "checkpoints",
            "--metrics", "metrics/pretrain.json")


def run_dasi(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(dasi(*args), cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]
