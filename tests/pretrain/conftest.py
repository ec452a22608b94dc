"""Fixtures for the pretrain/export tests: the tiny model and a private copy of the packed data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from dasi.model_config import ModelConfig
from dasi.runlog import LoggingConfig, RunLog
from pretrain.pretrain_config import PretrainConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def model_cfg() -> ModelConfig:
    tiny = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    return ModelConfig.model_validate(tiny["model"])


@pytest.fixture(scope="session")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of data/packed (the pack stage's output), so a concurrent `dvc repro` can't change it."""
    src = ROOT / "data" / "packed"
    if not (src / "manifest.json").exists():
        pytest.skip("data/packed is missing: run `dvc repro pack` first")
    dst = tmp_path_factory.mktemp("packed") / "packed"
    shutil.copytree(src, dst)
    return dst / "manifest.json"


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    d = ROOT / "data" / "tokenizer"
    if not (d / "tokenizer.json").exists():
        pytest.skip("data/tokenizer is missing: run `dvc repro tokenizer` first")
    return d


def small_cfg(**kw) -> PretrainConfig:
    base = dict(train_steps=6, micro_batch_size=2, global_batch_size=4, lr=3e-3, min_lr=3e-4,
                warmup_steps=2, eval_interval=3, eval_iters=1, save_interval=3)
    return PretrainConfig.model_validate({**base, **kw})


def runlog(tmp: Path, cfg: PretrainConfig) -> RunLog:
    return RunLog("pretrain", cfg, logging=LoggingConfig(logs_dir=str(tmp / "logs"), wandb=False,
                                                         tensorboard=False))
