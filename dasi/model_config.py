"""The LLaMA-style model shape shared by pretrain, export and the parameter counter."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from dasi.strict import StrictModel


class ModelConfig(StrictModel):
    hidden_size: PositiveInt
    num_layers: PositiveInt
    num_attention_heads: PositiveInt
    num_query_groups: PositiveInt = Field(description="KV heads (GQA)")
    ffn_hidden_size: PositiveInt
    vocab_size: PositiveInt = Field(description="model vocabulary (>= tokenizer size, padded)")
    seq_length: PositiveInt
    norm_epsilon: float = Field(1e-5, gt=0, lt=1)
    rotary_base: float = Field(500_000.0, gt=0)
    normalization: Literal["RMSNorm"] = "RMSNorm"
    activation: Literal["swiglu"] = "swiglu"
    untie_embeddings: bool = True
    add_bias: bool = False
    init_std: float = Field(0.02, gt=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} must be divisible by "
                f"num_query_groups {self.num_query_groups}"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def parameter_count(m: ModelConfig) -> int:
    """Exact parameter count of the LLaMA-style GPT that pretrain builds from ``m``."""
    h, kv = m.hidden_size, m.num_query_groups * m.head_dim
    bias = m.add_bias
    attn = h * h + 2 * h * kv + h * h  # q, k, v, o
    attn += (h + 2 * kv + h) if bias else 0
    mlp = 3 * h * m.ffn_hidden_size  # SwiGLU: gate + up (fused fc1) and down
    mlp += (2 * m.ffn_hidden_size + h) if bias else 0
    norms = 2 * h  # RMSNorm has a weight only
    per_layer = attn + mlp + norms
    embedding = m.vocab_size * h
    head = m.vocab_size * h if m.untie_embeddings else 0
    return embedding + m.num_layers * per_layer + h + head
