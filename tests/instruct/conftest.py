"""A tiny random LlamaForCausalLM of the tiny profile's shape, saved with data/tokenizer."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TOKENIZER = Path(__file__).resolve().parents[2] / "data" / "tokenizer"


def build_tiny_llama(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=2048, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=192, max_position_embeddings=128,
                      rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    for f in TOKENIZER.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (TOKENIZER / "tokenizer.json").exists():
        pytest.skip("data/tokenizer is missing: run `dvc repro tokenizer` (or dvc pull) first")
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "base")
