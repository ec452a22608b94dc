"""Core attention through ``torch.nn.functional.scaled_dot_product_attention`` for megatron's local
layer spec, used on GPU when Transformer Engine is absent (see ``pretrain.model.layer_spec``).

megatron-core's own local ``DotProductAttention`` materialises the [b, heads, s, s] score and
probability matrices (about 1 GB per layer at 16 heads and s=4096 in bf16) and runs an unfused
softmax. SDPA dispatches to a fused kernel (FlashAttention on Hopper) that never stores them. It
computes the same function: same scale, causal mask, grouped KV heads; it adds no parameters, so
checkpoints are interchangeable with ``DotProductAttention``'s.

It also runs context parallelism where Transformer Engine is absent (megatron's local attention
refuses it; on CPU it is the only way): each context-parallel rank holds two of the sequence's
2 x CP chunks (megatron's load-balanced split, ``get_batch_on_this_cp_rank``); keys and values are
all-gathered over the context-parallel group and put back in sequence order, and the causal mask
is built from the global positions of the local queries. Communication is all-gather (as TE's
``cp_comm_type="all_gather"``), not a ring: simple and exact, with the full keys in memory.
"""

from __future__ import annotations

import megatron.core.parallel_state as mpu
import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


class _GatherSeq(torch.autograd.Function):
    """All-gather along dim 0 over ``group``; the gradient is summed over the group and sliced back
    (all-reduce, which gloo has, unlike reduce-scatter)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group, ctx.rows = group, x.size(0)
        parts = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size(group))]
        torch.distributed.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad, group=ctx.group)
        rank = torch.distributed.get_rank(ctx.group)
        return grad[rank * ctx.rows:(rank + 1) * ctx.rows], None


def cp_chunk_order(cp: int) -> list[int]:
    """The sequence chunks in the order an all-gather over ``cp`` ranks returns them: rank r holds
    chunks r and 2cp-1-r."""
    return [c for r in range(cp) for c in (r, 2 * cp - 1 - r)]


def cp_positions(cp: int, rank: int, chunk: int, device=None) -> torch.Tensor:
    """Global positions of the tokens context-parallel rank ``rank`` holds."""
    chunks = (rank, 2 * cp - 1 - rank)
    return torch.cat([torch.arange(c * chunk, (c + 1) * chunk, device=device) for c in chunks])


class SdpaAttention(DotProductAttention):
    """``DotProductAttention``'s interface and settings, computed by SDPA.

    Takes query [sq, b, heads, d], key/value [sk, b, groups, d]; returns [sq, b, heads * d].
    A given ``attention_mask`` is megatron's (True = masked out); without one a causal layer
    masks causally, as ``DotProductAttention`` does.
    """

    def __init__(self, config, layer_number, attn_mask_type, attention_type, **kwargs) -> None:
        # DotProductAttention refuses context parallelism: built with it off, it is done here.
        cp = config.context_parallel_size
        config.context_parallel_size = 1
        try:
            super().__init__(config, layer_number, attn_mask_type, attention_type, **kwargs)
        finally:
            config.context_parallel_size = cp
        self.cp = cp
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
        if self.cp > 1:
            key, value, allowed = self._gather_context(query, key, value, attention_mask)
            attention_mask, causal = None, False
        sq, sk = query.size(0), key.size(0)
        if self.cp == 1:
            causal = self.attn_mask_type == AttnMaskType.causal and attention_mask is None and sq > 1
            if causal and sq != sk:
                raise ValueError(f"a causal mask needs as many queries as keys (got {sq} and {sk})")
            allowed = None if attention_mask is None else ~attention_mask
        # [s, b, heads, d] -> [b, heads, s, d], the layout SDPA takes.
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=causal,
                                             scale=self.sdpa_scale,
                                             enable_gqa=q.size(1) != k.size(1))
        # [b, heads, sq, d] -> [sq, b, heads * d]
        return out.permute(2, 0, 1, 3).reshape(sq, out.size(0), self.hidden_size_per_partition)

    def _gather_context(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None):
        """Keys and values of the whole sequence in order, and the mask of what each local query
        may see (causal by global position, and the document mask when given: megatron's, True =
        masked, its query rows already this rank's, its key columns the whole sequence)."""
        if self.attn_mask_type != AttnMaskType.causal:
            raise ValueError("SdpaAttention's context parallelism supports causal attention only")
        group = mpu.get_context_parallel_group()
        rank, chunk = torch.distributed.get_rank(group), query.size(0) // 2
        order = torch.tensor(cp_chunk_order(self.cp), device=key.device)
        back = torch.argsort(order)  # gathered chunk i holds sequence chunk order[i]

        def whole(t: torch.Tensor) -> torch.Tensor:
            t = _GatherSeq.apply(t, group)
            return t.view(2 * self.cp, chunk, *t.shape[1:])[back].flatten(0, 1)

        key, value = whole(key), whole(value)
        q_pos = cp_positions(self.cp, rank, chunk, key.device)
        allowed = torch.arange(key.size(0), device=key.device)[None, :] <= q_pos[:, None]
        allowed = allowed[None, None]  # [1, 1, sq, sk]
        if attention_mask is not None:
            allowed = allowed & ~attention_mask
        return key, value, allowed
