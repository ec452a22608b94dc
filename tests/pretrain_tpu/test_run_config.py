"""The model/pretrain sections translated to MaxText keys, and what the translation refuses."""

from __future__ import annotations

import math

import pytest

from dasi.config import ConfigError
from pretrain.config import PretrainConfig
from pretrain.pack import verify_manifest
from pretrain_tpu import run_config
from pretrain_tpu.config import PretrainTpuConfig, chips
from tests.pretrain_tpu.tiny import MODEL

PRE = PretrainConfig(train_steps=300, micro_batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=20)


def maxtext_lr(keys: dict, step: int) -> float:
    """MaxText 0.2.5's schedule (maxtext_utils.create_learning_rate_schedule), at update ``step``."""
    lr, final = keys["learning_rate"], keys["learning_rate"] * keys["learning_rate_final_fraction"]
    warmup = int(keys["learning_rate_schedule_steps"] * keys["warmup_steps_fraction"])
    if step < warmup:
        return lr * step / warmup
    cos_steps = keys["learning_rate_schedule_steps"] - warmup
    a = 0.5 * (math.cos(math.pi * (step - warmup) / (cos_steps - 1)) + 1)
    return lr * a + final * (1 - a)


def megatron_lr(p: PretrainConfig, step: int) -> float:
    """megatron-core's OptimizerParamScheduler (linear warmup from 0, cosine to min_lr at train_steps)."""
    if step <= p.warmup_steps:
        return p.lr * step / p.warmup_steps
    ratio = (step - p.warmup_steps) / (p.train_steps - p.warmup_steps)
    return p.min_lr + (p.lr - p.min_lr) * 0.5 * (math.cos(math.pi * ratio) + 1)


def test_shape_and_schedule_are_the_megatron_paths(packed):
    keys = run_config.maxtext_keys(MODEL, PRE, PretrainTpuConfig(), verify_manifest(packed, "size"))
    assert (
        keys["base_emb_dim"],
        keys["base_num_query_heads"],
        keys["base_num_kv_heads"],
        keys["head_dim"],
        keys["base_mlp_dim"],
        keys["base_num_decoder_layers"],
    ) == (64, 4, 2, 16, 192, 2)
    assert keys["logits_via_embedding"] is False and keys["adamw_mask"] == [".*scale"]
    assert keys["per_device_batch_size"] == 4 and keys["steps"] == 300
    # every update's rate, MaxText's formula on these keys against Megatron's on the section
    for step in range(PRE.train_steps):
        assert maxtext_lr(keys, step) == pytest.approx(megatron_lr(PRE, step), rel=1e-9, abs=1e-12)


def test_data_spec_is_the_blend_pretrain_builds(packed):
    man = verify_manifest(packed, "size")
    spec = run_config.data_spec(man, "/p", "/i")
    parts = spec.split(";")
    train = [d for d in man.split("train") if d.tokens > 0 and d.weight > 0]
    assert len(parts) == len(train) > 0
    for i, (part, d) in enumerate(zip(parts, train, strict=True)):
        assert part == f"/i/{i:03d}|/p/{d.prefix},{d.weight!r}"


def test_refused_before_anything_runs(packed):
    man = verify_manifest(packed, "size")
    with pytest.raises(ConfigError, match="untie_embeddings"):
        run_config.maxtext_keys(
            MODEL.model_copy(update={"untie_embeddings": False}), PRE, PretrainTpuConfig(), man
        )
    with pytest.raises(ConfigError, match=r"pretrain_tpu.maxtext.steps"):
        run_config.maxtext_keys(MODEL, PRE, PretrainTpuConfig(maxtext={"steps": 3}), man)
    with pytest.raises(ValueError, match="v5p-128"):
        PretrainTpuConfig(cluster={"tpu_type": "tpu-big"})


def test_chips_per_accelerator_type():
    assert (
        chips("v5p-256") == 128
        and chips("v4-8") == 4
        and chips("v6e-64") == 64
        and chips("v5litepod-16") == 16
    )
