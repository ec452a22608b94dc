"""Core attention through ``torch.nn.functional.scaled_dot_product_attention`` for megatron's local
layer spec, used on GPU when Transformer Engine is absent (see ``pretrain.model.layer_spec``).

megatron-core's own local ``DotProductAttention`` materialises the [b, heads, s, s] score and
probability matrices (about 1 GB per layer at 16 heads and s=4096 in bf16) and runs an unfused
softmax. SDPA dispatches to a fused kernel (FlashAttention on Hopper) that never stores them. It
computes the same function: same scale, causal mask, grouped KV heads; it adds no parameters, so
checkpoints are interchangeable with ``DotProductAttention``'s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


class SdpaAttention(DotProductAttention):
    """``DotProductAttention``'s interface and settings, computed by SDPA.

    Takes query [sq, b, heads, d], key/value [sk, b, groups, d]; returns [sq, b, heads * d].
    A given ``attention_mask`` is megatron's (True = masked out); without one a causal layer
    masks causally, as ``DotProductAttention`` does.
    """

    def __init__(self, config, layer_number, attn_mask_type, attention_type, **kwargs) -> None:
        super().__init__(config, layer_number, attn_mask_type, attention_type, **kwargs)
        unsupported = {"softmax_type": config.softmax_type != "vanilla",
                       "window_size": config.window_size is not None,
                       "attention_dropout": self.attention_dropout.p > 0}
        if any(unsupported.values()):
            raise ValueError(f"SdpaAttention does not support {[k for k, v in unsupported.items() if v]}")
        # DotProductAttention divides its scale by the layer number when query-key layer scaling
        # is on and its softmax multiplies it back; SDPA applies one scale.
        self.sdpa_scale = self.softmax_scale * (
            self.layer_number if config.apply_query_key_layer_scaling else 1)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, attn_mask_type: AttnMaskType | None = None,
                attention_bias: torch.Tensor | None = None, packed_seq_params=None) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SdpaAttention supports neither packed sequences nor an attention bias")
        sq, sk = query.size(0), key.size(0)
        causal = self.attn_mask_type == AttnMaskType.causal and attention_mask is None and sq > 1
        if causal and sq != sk:
            raise ValueError(f"a causal mask needs as many queries as keys (got {sq} and {sk})")
        mask = None if attention_mask is None else ~attention_mask
        # [s, b, heads, d] -> [b, heads, s, d], the layout SDPA takes.
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                             scale=self.sdpa_scale,
                                             enable_gqa=q.size(1) != k.size(1))
        # [b, heads, sq, d] -> [sq, b, heads * d]
        return out.permute(2, 0, 1, 3).reshape(sq, out.size(0), self.hidden_size_per_partition)
