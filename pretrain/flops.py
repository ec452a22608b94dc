"""Model FLOPs per token and device peaks: MFU in training logs, the MFU benchmark and the plan.

Model FLOPs follow the PaLM / Megatron-LM convention: recompute and elementwise work (norms,
RoPE, softmax, the loss) are not counted. Per token, for L layers, hidden h, heads n of size d
(n*d = h), KV groups g, FFN f, vocab V, sequence s:

    N_mm      = L * (2*h*n*d + 2*h*g*d + 3*h*f) + h*V
                (q and o, k and v, SwiGLU gate+up+down, and the LM head; the input embedding
                is a lookup, with no matmul forward or backward)
    per token = 6 * N_mm                        (forward 2, backward 4 FLOPs per weight)
              + 12 * L * s * n * d              (Q.K^T and P.V: 2*2*s*n*d forward, x3 with backward)

The attention term counts the whole s x s score matrix as the convention does, although a causal
kernel computes only half of it; ``causal=True`` counts 6 * L * s * n * d instead.
"""

from __future__ import annotations

from dasi.model_config import ModelConfig

# Dense bf16 peak in TFLOP/s (vendor datasheets, no sparsity), by a substring of the CUDA device
# name; the first match wins, so the more specific names come first. H200 has the H100 SXM's peak.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0),
    ("GH200", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
]


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a CUDA device by its name, or None when unknown."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


def matmul_params(m: ModelConfig) -> int:
    """N_mm: the weights every token multiplies (see the module docstring)."""
    qo = 2 * m.hidden_size * m.num_attention_heads * m.head_dim
    kv = 2 * m.hidden_size * m.num_query_groups * m.head_dim
    mlp = 3 * m.hidden_size * m.ffn_hidden_size
    return m.num_layers * (qo + kv + mlp) + m.hidden_size * m.vocab_size


def flops_per_token(m: ModelConfig, causal: bool = False) -> float:
    attention = (6 if causal else 12) * m.num_layers * m.seq_length * m.num_attention_heads * m.head_dim
    return 6.0 * matmul_params(m) + attention
