"""Fixtures for the pretrain/export tests (packed data and tokenizer come from tests/conftest.py)."""

from __future__ import annotations

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


def small_cfg(**kw) -> PretrainConfig:
    base = dict(train_steps=6, micro_batch_size=2, global_batch_size=4, lr=3e-3, min_lr=3e-4,
                warmup_steps=2, eval_interval=3, eval_iters=1, save_interval=3)
    return PretrainConfig.model_validate({**base, **kw})


def runlog(tmp: Path, cfg: PretrainConfig) -> RunLog:
    return RunLog("pretrain", cfg, logging=LoggingConfig(logs_dir=str(tmp / "logs"), wandb=False,
                                                         tensorboard=False))
