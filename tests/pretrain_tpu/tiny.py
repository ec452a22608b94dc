"""The tiny profile's model shape, which the TPU-path tests translate and train."""

from __future__ import annotations

from dasi.model_config import ModelConfig

MODEL = ModelConfig(
    hidden_size=64,
    num_layers=2,
    num_attention_heads=4,
    num_query_groups=2,
    ffn_hidden_size=192,
    vocab_size=2048,
    seq_length=128,
    untie_embeddings=True,
)
