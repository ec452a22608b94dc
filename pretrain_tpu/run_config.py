"""The ``model:`` and ``pretrain:`` sections, and the packed data, as one MaxText run config.

MaxText reads our Megatron ``.bin/.idx`` files itself (``grain_file_type=mmap_npy``) and builds
Megatron's sample index and blend, so nothing is converted and the sample order is the Megatron
path's: same files, weights, seed and sample count, and a blend margin equal to our per-dataset
surplus (``pretrain.data``). The keys written here are the whole translation; a key MaxText has
and the Megatron path does not (eval, tied logits in bf16) is refused rather than guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dasi.config import ConfigError
from dasi.model_config import ModelConfig
from pretrain.config import PretrainConfig
from pretrain.pack import PackManifest
from pretrain_tpu.config import PretrainTpuConfig, chips

# pretrain.data builds with mid_level_dataset_surplus=0.05; MaxText's margin is in percent.
BLEND_MARGIN_PERCENT = 5.0
RUN_NAME = "dasi"
# Keys this module sets from the dasi sections: `pretrain_tpu.maxtext` may not override them.
OWNED = {
    "steps",
    "per_device_batch_size",
    "max_target_length",
    "base_emb_dim",
    "base_num_query_heads",
    "base_num_kv_heads",
    "head_dim",
    "base_mlp_dim",
    "base_num_decoder_layers",
    "vocab_size",
    "normalization_layer_epsilon",
    "rope_max_timescale",
    "logits_via_embedding",
    "learning_rate",
    "learning_rate_schedule_steps",
    "warmup_steps_fraction",
    "learning_rate_final_fraction",
    "lr_schedule_type",
    "adam_b1",
    "adam_b2",
    "adam_eps",
    "adam_weight_decay",
    "adamw_mask",
    "gradient_clipping_threshold",
    "init_weights_seed",
    "data_shuffle_seed",
    "dataset_type",
    "grain_file_type",
    "grain_train_files",
    "mmap_eod_id",
    "reset_attention_mask",
    "dtype",
    "weight_dtype",
    "run_name",
    "base_output_directory",
    "metrics_file",
    "load_parameters_path",
    "checkpoint_period",
    "enable_checkpointing",
    "scan_layers",
    "eval_interval",
}


def devices(cfg: PretrainTpuConfig) -> int:
    """JAX devices of the run: one on a CPU, the chips of every slice on a cluster."""
    if cfg.launcher == "local":
        return 1
    return chips(cfg.cluster.tpu_type) * cfg.cluster.num_slices


def train_entries(manifest: PackManifest) -> list[tuple[str, float]]:
    """(prefix, weight) of the training datasets, exactly those pretrain.data blends."""
    return [(d.prefix, d.weight) for d in manifest.split("train") if d.tokens > 0 and d.weight > 0]


def data_spec(manifest: PackManifest, packed_root: str, index_root: str) -> str:
    """MaxText's blended mmap_npy spec: ``<index dir>|<prefix>,<weight>;...``. Each dataset gets an
    index folder of its own, where MaxText caches the sample index it builds."""
    parts = [
        f"{index_root}/{i:03d}|{packed_root}/{prefix},{weight!r}"
        for i, (prefix, weight) in enumerate(train_entries(manifest))
    ]
    return ";".join(parts)


def _schedule(p: PretrainConfig) -> dict[str, Any]:
    """Megatron's schedule in MaxText's terms. MaxText's cosine reaches its final value at step
    ``schedule_steps - 1``, Megatron's at ``train_steps``: one more step of schedule makes them the
    same curve, and the warmup fraction is chosen so that MaxText's int() truncation gives exactly
    ``warmup_steps``."""
    schedule_steps = p.train_steps + 1
    keys: dict[str, Any] = {
        "learning_rate": p.lr,
        "learning_rate_final_fraction": p.min_lr / p.lr,
        "learning_rate_schedule_steps": schedule_steps,
        "warmup_steps_fraction": (p.warmup_steps + 0.5) / schedule_steps,
        "lr_schedule_type": p.lr_schedule,
    }
    if p.lr_schedule == "wsd":
        keys["wsd_decay_steps_fraction"] = p.wsd_decay_steps / schedule_steps
    return keys


def maxtext_keys(
    model: ModelConfig, p: PretrainConfig, cfg: PretrainTpuConfig, manifest: PackManifest
) -> dict[str, Any]:
    """Every MaxText key of the run but the paths (:func:`path_keys`)."""
    if not model.untie_embeddings:
        raise ConfigError(
            "model.untie_embeddings = false: the TPU path needs untied embeddings "
            "(MaxText computes tied logits in bfloat16, 4e-3 off the Megatron path)"
        )
    if model.add_bias or model.normalization != "RMSNorm" or model.activation != "swiglu":
        raise ConfigError(
            "model: the TPU path builds MaxText's llama2 block: add_bias = false, "
            "normalization = RMSNorm, activation = swiglu"
        )
    if p.document_masking:
        raise ConfigError(
            "pretrain.document_masking = true: not carried to the TPU path yet "
            "(MaxText's reset_attention_mask is untested against it)"
        )
    n = devices(cfg)
    clash = sorted(set(cfg.maxtext) & OWNED)
    if clash:
        raise ConfigError(
            f"pretrain_tpu.maxtext.{clash[0]}: set by the model/pretrain sections; "
            "allowed: keys the TPU path does not translate"
        )
    cpu = cfg.hardware == "cpu"
    keys: dict[str, Any] = {
        "base_config": "base.yml",
        "run_name": RUN_NAME,
        "hardware": cfg.hardware,
        # shape
        "decoder_block": "llama2",
        "base_emb_dim": model.hidden_size,
        "base_num_decoder_layers": model.num_layers,
        "base_num_query_heads": model.num_attention_heads,
        "base_num_kv_heads": model.num_query_groups,
        "head_dim": model.head_dim,
        "base_mlp_dim": model.ffn_hidden_size,
        "vocab_size": model.vocab_size,
        "max_target_length": model.seq_length,
        "normalization_layer_epsilon": model.norm_epsilon,
        "rope_max_timescale": model.rotary_base,
        "rope_type": "default",
        "logits_via_embedding": False,
        "mlp_activations": ["silu", "linear"],
        "enable_dropout": False,
        "scan_layers": cfg.scan_layers,
        "dtype": "bfloat16" if p.bf16 else "float32",
        "weight_dtype": "float32",
        # optimisation: AdamW as Megatron's, no decay on norm scales (Megatron skips 1-D params)
        "steps": p.train_steps,
        "per_device_batch_size": p.global_batch / n,
        **_schedule(p),
        "adam_b1": p.adam_beta1,
        "adam_b2": p.adam_beta2,
        "adam_eps": p.adam_eps,
        "adam_weight_decay": p.weight_decay,
        "adamw_mask": [".*scale"],
        "gradient_clipping_threshold": p.clip_grad,
        "init_weights_seed": p.seed,
        # data: the packed Megatron files, Megatron's order
        "dataset_type": "grain",
        "grain_file_type": "mmap_npy",
        "grain_worker_count": 0,
        "mmap_eod_id": manifest.eos_id,
        "reset_attention_mask": False,
        "eod_mask_loss": False,
        "data_shuffle_seed": p.seed,
        "eval_interval": -1,
        # checkpoints: synchronous, so that an interrupted run resumes from a whole one
        "enable_checkpointing": True,
        "async_checkpointing": False,
        "checkpoint_period": p.save_interval,
        "enable_goodput_recording": False,
        "monitor_goodput": False,
    }
    if cpu:  # no TPU runtime, no coordinator; exact fp32 matmuls for the parity checks
        keys.update(
            skip_jax_distributed_system=True,
            jax_cache_dir="",
            attention="dot_product",
            matmul_precision="highest",
        )
    return {**keys, **cfg.maxtext}


def path_keys(
    out: str, manifest: PackManifest, packed_root: str, metrics_file: str, init_items: str | None
) -> dict[str, str]:
    """The keys naming files, absolute where MaxText needs them (Orbax refuses relative paths)."""
    keys = {
        "base_output_directory": out,
        "metrics_file": metrics_file,
        "grain_train_files": data_spec(manifest, packed_root, f"{out}/index"),
    }
    if init_items:
        keys["load_parameters_path"] = init_items
    return keys


def to_yaml(keys: dict[str, Any]) -> str:
    import yaml

    return (
        "# MaxText run config written by dasi (pretrain_tpu/run_config.py) from the model, pretrain\n"
        "# and pretrain_tpu sections; paths are given on the command line (the run log has them).\n"
        + yaml.safe_dump(keys, sort_keys=False)
    )


def overrides(keys: dict[str, Any]) -> list[str]:
    """``key=value`` command-line overrides, as MaxText parses them."""
    out = []
    for k, v in keys.items():
        if isinstance(v, bool):
            v = str(v).lower()
        elif isinstance(v, list):
            v = "[" + ",".join(map(str, v)) + "]"
        out.append(f"{k}={v}")
    return out


def yml_path(out: Path) -> Path:
    return Path(out) / "run.yml"
