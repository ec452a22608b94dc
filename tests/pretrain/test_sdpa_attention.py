"""SdpaAttention computes what megatron's DotProductAttention computes (CPU, float32)."""

from __future__ import annotations

import pytest
import torch

from dasi.model_config import ModelConfig
from pretrain.model import build_gpt, distributed, layer_spec, transformer_config

# 4 query heads sharing 2 KV groups: the grouped-query path is exercised.
SHAPE = ModelConfig(hidden_size=64, num_layers=2, num_attention_heads=4, num_query_groups=2,
                    ffn_hidden_size=128, vocab_size=256, seq_length=32)


@pytest.fixture(scope="module")
def megatron_state():
    with distributed():
        yield


def _pair(layer_number: int = 1):
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from pretrain.sdpa_attention import SdpaAttention

    cfg = transformer_config(SHAPE)
    return tuple(cls(cfg, layer_number, AttnMaskType.causal, "self")
                 for cls in (DotProductAttention, SdpaAttention))


def _qkv(seq: int = 32, batch: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    d = SHAPE.head_dim
    return [torch.randn(seq, batch, heads, d, generator=g, requires_grad=True)
            for heads in (SHAPE.num_attention_heads, SHAPE.num_query_groups, SHAPE.num_query_groups)]


def _run(attn, qkv: list[torch.Tensor], mask: torch.Tensor | None) -> tuple[torch.Tensor, list]:
    inputs = [t.detach().clone().requires_grad_() for t in qkv]
    out = attn(*inputs, mask)
    out.square().sum().backward()
    return out.detach(), [t.grad for t in inputs]


def test_causal_output_and_grads_match_dot_product_attention(megatron_state) -> None:
    ref, sdpa = _pair()
    qkv = _qkv()
    (out_ref, grads_ref), (out, grads) = _run(ref, qkv, None), _run(sdpa, qkv, None)
    assert out.shape == out_ref.shape == (32, 3, SHAPE.hidden_size)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-5)


def test_causality_a_later_key_never_changes_an_earlier_output(megatron_state) -> None:
    _, sdpa = _pair()
    q, k, v = (t.detach() for t in _qkv())
    k2, v2 = k.clone(), v.clone()
    k2[20:], v2[20:] = 0.0, 7.0
    torch.testing.assert_close(sdpa(q, k, v, None)[:20], sdpa(q, k2, v2, None)[:20], rtol=0, atol=0)


def test_given_mask_matches_dot_product_attention(megatron_state) -> None:
    # Two documents in one sequence (causal within each): megatron's mask is True where masked.
    pos = torch.arange(32)
    doc = (pos >= 12).long()
    mask = ~((pos[None, :] <= pos[:, None]) & (doc[None, :] == doc[:, None]))
    mask = mask[None, None]
    ref, sdpa = _pair()
    qkv = _qkv()
    (out_ref, grads_ref), (out, grads) = _run(ref, qkv, mask), _run(sdpa, qkv, mask)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-5)


def test_query_key_layer_scaling_gives_the_same_scale(megatron_state) -> None:
    from megatron.core.transformer.enums import AttnMaskType

    from pretrain.sdpa_attention import SdpaAttention

    cfg = transformer_config(SHAPE)
    cfg.apply_query_key_layer_scaling = True
    sdpa = SdpaAttention(cfg, 3, AttnMaskType.causal, "self")
    assert sdpa.sdpa_scale == pytest.approx(SHAPE.head_dim ** -0.5)


def test_cpu_default_keeps_dot_product_attention(megatron_state) -> None:
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from pretrain.sdpa_attention import SdpaAttention

    def core(spec):
        return spec.submodules.self_attention.submodules.core_attention

    assert core(layer_spec(use_te=False)) is DotProductAttention
    assert core(layer_spec(use_te=False, sdpa=True)) is SdpaAttention
    assert core(layer_spec(use_te=False)) is DotProductAttention  # the spec is not shared


def test_gpt_loss_is_the_same_with_either_core_attention(megatron_state) -> None:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, SHAPE.vocab_size, (2, SHAPE.seq_length), generator=g)
    pos = torch.arange(SHAPE.seq_length).expand(2, -1)
    losses = []
    for sdpa in (False, True):
        torch.manual_seed(5)
        gpt = build_gpt(SHAPE, use_te=False, sdpa=sdpa)
        losses.append(gpt(tokens, pos, None, labels=tokens.roll(-1, 1)).detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=1e-5)


def test_gpu_settings_build_the_local_layers_with_sdpa(megatron_state, monkeypatch) -> None:
    # transformer_config and layer_spec as they are on a GPU without Transformer Engine or Apex
    # (built on the CPU): torch's RMSNorm refuses persist_layer_norm, and fusing the masked
    # softmax would import Apex's kernels.
    import dataclasses

    from megatron.core.models.gpt import GPTModel

    import pretrain.model as model
    from pretrain.sdpa_attention import SdpaAttention

    monkeypatch.setattr(model, "on_gpu", lambda: True)
    cfg = model.transformer_config(SHAPE)
    assert not cfg.persist_layer_norm and not cfg.masked_softmax_fusion and cfg.bias_activation_fusion
    gpt = GPTModel(config=dataclasses.replace(cfg, use_cpu_initialization=True),
                   transformer_layer_spec=model.layer_spec(use_te=False), vocab_size=SHAPE.vocab_size,
                   max_sequence_length=SHAPE.seq_length, position_embedding_type="rope")
    assert isinstance(gpt.decoder.layers[0].self_attention.core_attention, SdpaAttention)
