"""Hugging Face Llama folder -> our checkpoint folder (``iter_0000000`` + ``checksums.json`` +
``latest``, model weights only), for continued pretraining and adaptation (``pretrain.init_from``).

The HF config must have the shape of the profile's ``model:`` section (one line names the first
field that differs). The weights are read tensor by tensor from the safetensors files (one or
sharded), renamed and fused into megatron's layout (:func:`hf_to_megatron`, the inverse of
:func:`pretrain.export.megatron_to_hf`), copied into a model from ``build_gpt`` and saved with
``dist_checkpointing``: it loads at any tensor-parallel size. Then a parity check: megatron's
logits against the HF model's on a few tokens, written into ``import.json`` beside the checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from dasi.atomic import atomic_path, write_json
from dasi.config import ConfigError
from dasi.model_config import ModelConfig
from dasi.stage import MissingInputs

REPORT = "import.json"


class ParityError(ValueError):
    """The imported model's logits differ from the HF model's by more than the tolerance."""


def _rope(config: dict[str, Any]) -> tuple[float | None, tuple[str, Any]]:
    """RoPE theta, and its scaling under the field that holds it, as transformers 4 (top-level keys)
    or 5 (``rope_parameters``) writes them."""
    params = config.get("rope_parameters") or {}
    theta = config.get("rope_theta", params.get("rope_theta"))
    if params.get("rope_type", "default") != "default":
        return theta, ("rope_parameters", params)
    return theta, ("rope_scaling", config.get("rope_scaling"))


def check_config(hf_dir: Path, m: ModelConfig) -> dict[str, Any]:
    """The HF ``config.json``, or a ConfigError naming the first field that does not match ``m``."""
    path = Path(hf_dir) / "config.json"
    config = json.loads(path.read_text())
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (config.get("hidden_size") or 0) // (heads or 1)
    theta, (scaling_field, scaling) = _rope(config)
    checks = [  # (HF field, its value, the value it must have, why)
        ("model_type", config.get("model_type"), "llama", "LLaMA models only"),
        ("hidden_size", config.get("hidden_size"), m.hidden_size, "model.hidden_size"),
        ("num_hidden_layers", config.get("num_hidden_layers"), m.num_layers, "model.num_layers"),
        ("num_attention_heads", heads, m.num_attention_heads, "model.num_attention_heads"),
        ("num_key_value_heads", config.get("num_key_value_heads", heads), m.num_query_groups,
         "model.num_query_groups"),
        ("intermediate_size", config.get("intermediate_size"), m.ffn_hidden_size, "model.ffn_hidden_size"),
        ("vocab_size", config.get("vocab_size"), m.vocab_size, "model.vocab_size"),
        ("head_dim", head_dim, m.head_dim, "model.hidden_size / model.num_attention_heads"),
        ("rms_norm_eps", config.get("rms_norm_eps"), m.norm_epsilon, "model.norm_epsilon"),
        ("rope_theta", theta, m.rotary_base, "model.rotary_base"),
        (scaling_field, scaling, None, "plain RoPE only"),
        ("tie_word_embeddings", config.get("tie_word_embeddings", False), not m.untie_embeddings,
         f"model.untie_embeddings is {m.untie_embeddings}"),
        ("hidden_act", config.get("hidden_act"), "silu", "SwiGLU"),
        ("attention_bias", config.get("attention_bias", False), False, "bias-free models only"),
        ("mlp_bias", config.get("mlp_bias", False), False, "bias-free models only"),
    ]
    for field, value, want, why in checks:
        if value != want:
            raise ConfigError(f"{path}: {field} = {value!r}, expected {want!r} ({why}): the profile's model: "
                              f"section must have the HF model's shape")
    return config


class HFWeights(Mapping[str, torch.Tensor]):
    """The tensors of an HF folder's safetensors files (``model.safetensors`` or shards with an
    index), each read from disk when asked for."""

    def __init__(self, hf_dir: Path) -> None:
        from safetensors import safe_open

        self.dir = Path(hf_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            self.files = {k: self.dir / f for k, f in json.loads(index.read_text())["weight_map"].items()}
        elif (self.dir / "model.safetensors").is_file():
            with safe_open(self.dir / "model.safetensors", "pt") as f:
                self.files = dict.fromkeys(f.keys(), self.dir / "model.safetensors")
        else:
            raise MissingInputs(f"{self.dir}: no model.safetensors or model.safetensors.index.json")

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self.files:
            raise KeyError(f"{self.dir}: no tensor {name!r} in its safetensors files")
        with safe_open(self.files[name], "pt") as f:
            return f.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def top_from_hf(hf: Mapping[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """Embedding, final norm and (untied) output layer under megatron's names."""
    out = {"embedding.word_embeddings.weight": hf["model.embed_tokens.weight"],
           "decoder.final_layernorm.weight": hf["model.norm.weight"]}
    if m.untie_embeddings:
        out["output_layer.weight"] = hf["lm_head.weight"]
    return out


def layer_from_hf(hf: Mapping[str, torch.Tensor], i: int, m: ModelConfig) -> dict[str, torch.Tensor]:
    """Layer ``i`` under megatron's local-spec names: ``linear_qkv`` rows per KV group as
    [q heads of the group, k, v], ``linear_fc1`` rows as [gate, up]."""
    hd, groups, h = m.head_dim, m.num_query_groups, m.hidden_size
    q_per_group = m.num_attention_heads // groups
    src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
    q = hf[src + "self_attn.q_proj.weight"].reshape(groups, q_per_group * hd, h)
    k = hf[src + "self_attn.k_proj.weight"].reshape(groups, hd, h)
    v = hf[src + "self_attn.v_proj.weight"].reshape(groups, hd, h)
    return {
        dst + "self_attention.linear_qkv.weight": torch.cat([q, k, v], dim=1).reshape(-1, h),
        dst + "self_attention.linear_proj.weight": hf[src + "self_attn.o_proj.weight"],
        dst + "mlp.linear_fc1.weight": torch.cat([hf[src + "mlp.gate_proj.weight"],
                                                  hf[src + "mlp.up_proj.weight"]]),
        dst + "mlp.linear_fc2.weight": hf[src + "mlp.down_proj.weight"],
        dst + "input_layernorm.weight": hf[src + "input_layernorm.weight"],
        dst + "pre_mlp_layernorm.weight": hf[src + "post_attention_layernorm.weight"],
    }


def hf_parts(hf: Mapping[str, torch.Tensor], m: ModelConfig) -> Iterator[dict[str, torch.Tensor]]:
    """:func:`hf_to_megatron` a part at a time (the top tensors, then each layer)."""
    yield top_from_hf(hf, m)
    for i in range(m.num_layers):
        yield layer_from_hf(hf, i, m)


def hf_to_megatron(hf: Mapping[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """LLaMA tensors -> a TP=1 megatron GPT state dict (local-spec names), the inverse of
    :func:`pretrain.export.megatron_to_hf`."""
    out: dict[str, torch.Tensor] = {}
    for part in hf_parts(hf, m):
        out.update(part)
    return out


def fill(model: torch.nn.Module, parts: Iterator[dict[str, torch.Tensor]]) -> None:
    """Copy every parameter of ``model`` (TP=1, local spec) from ``parts``, checking that each one
    is given once with its exact shape."""
    params = dict(model.named_parameters())
    done: set[str] = set()
    with torch.no_grad():
        for part in parts:
            for name, tensor in part.items():
                if name not in params or name in done:
                    why = "given twice" if name in done else "not a parameter of the model"
                    raise KeyError(f"{name}: {why}")
                if tuple(tensor.shape) != tuple(params[name].shape):
                    raise ValueError(f"{name}: shape {tuple(tensor.shape)}, the model's is "
                                     f"{tuple(params[name].shape)}")
                params[name].copy_(tensor)
                done.add(name)
    missing = sorted(set(params) - done)
    if missing:
        raise KeyError(f"{missing[0]}: not set by the import (+{len(missing) - 1} more)")


def _weights_dtype(hf: HFWeights) -> torch.dtype:
    """bf16 when the HF weights are bf16 (kept exactly), else fp32 (fp16 widens exactly)."""
    return torch.bfloat16 if hf["model.embed_tokens.weight"].dtype == torch.bfloat16 else torch.float32


def load_weights(folder: Path, chunks: list) -> None:
    """Load a model-only checkpoint (an import: a step folder or a root with ``latest``) into
    already-built model chunks, at this run's tensor- and pipeline-parallel layout and dtype.
    Collective: every rank calls it. Check it first with :func:`pretrain.checkpoint.verify`."""
    from pretrain import checkpoint as ckpt

    ckpt.load(ckpt.weights_folder(folder), list(chunks), restore_rng=False)


def run(m: ModelConfig, hf_dir: Path, out_dir: Path, log: Any, max_logit_diff: float = 1e-4,
        parity_tokens: int = 16) -> dict[str, Any]:
    """Import ``hf_dir`` into checkpoint folder ``out_dir`` (which must not exist); returns the
    report (also ``out_dir/import.json``)."""
    from transformers import AutoModelForCausalLM

    from pretrain import checkpoint as ckpt
    from pretrain.model import build_gpt, distributed

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir}: exists; nothing was changed (remove it or name another folder)")
    check_config(hf_dir, m)
    hf = HFWeights(hf_dir)
    dtype = _weights_dtype(hf)
    ids = torch.randint(0, m.vocab_size, (1, min(parity_tokens, m.seq_length)),
                        generator=torch.Generator().manual_seed(0))
    with atomic_path(out_dir) as tmp:
        with distributed(tensor_parallel=1):
            # Local layers on every machine (their sharded keys are Transformer Engine's), built in
            # fp32 for the parity check and saved in the weights' dtype.
            gpt = build_gpt(m, use_te=False)
            fill(gpt, hf_parts(hf, m))
            # Nothing path-dependent inside: the same weights make the same checkpoint bytes.
            ckpt.save(tmp, 0, gpt.to(dtype), None, None, extra={}, history=None)
            gpt.float().eval()
            with torch.no_grad():
                mg_logits = gpt(ids, torch.arange(ids.shape[1]).unsqueeze(0), None).float()
            del gpt
        reference = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            hf_logits = reference(ids).logits.float()
        diff = (hf_logits - mg_logits).abs().max().item()
        report = {"source": str(hf_dir), "checkpoint": ckpt.iter_dir(out_dir, 0).name,
                  "dtype": str(dtype).removeprefix("torch."),
                  "parameters": sum(p.numel() for p in reference.parameters()),
                  "parity_tokens": ids.shape[1], "max_abs_logit_diff": diff, "max_logit_diff": max_logit_diff,
                  "argmax_agreement": (hf_logits.argmax(-1) == mg_logits.argmax(-1)).float().mean().item(),
                  "passed": diff < max_logit_diff}
        log.summary(report)
        if not report["passed"]:
            raise ParityError(f"import parity failed: max |logit diff| {diff:.3g} >= {max_logit_diff} "
                              f"(megatron vs {hf_dir}); nothing was written")
        write_json(tmp / REPORT, report)
    return report
