from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapt.embed_init import decompose, init_new_rows
from adapt.vocab import merge_vocab, save_merged, train_korean_bpe
from tests.adapt.tiny import english_llama, korean_texts


def grown(tmp_path: Path, tied: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = english_llama(tmp_path / "base", tied=tied)
    base = AutoTokenizer.from_pretrained(str(base_dir))
    korean = train_korean_bpe(korean_texts(), base.backend_tokenizer, 900, 2)
    merged_json, _ = merge_vocab(json.loads(base.backend_tokenizer.to_str()), korean, 200)
    save_merged(base_dir, merged_json, tmp_path / "tok")
    merged = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    report = init_new_rows(model, merged, base, old_vocab=len(base))
    return model, base, merged, before_in, before_out, report


@pytest.mark.parametrize("tied", [False, True])
def test_new_rows_are_the_mean_of_their_decomposition(tmp_path: Path, tied: bool) -> None:
    model, base, merged, before_in, before_out, report = grown(tmp_path, tied)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == head.shape[0] == len(merged) == len(base) + report.new_rows
    assert report.new_rows == 200 and report.tied is tied
    assert torch.equal(emb[: len(base)], before_in)  # old rows bit-identical
    assert torch.equal(head[: len(base)], before_out)
    assert (head is emb) is tied
    vocab, checked = merged.get_vocab(), 0
    for token in ("의", "에", "법"):  # syllables that kolaw text surely adds, each 3 bytes
        byte_level = merged.convert_ids_to_tokens(merged(token, add_special_tokens=False)["input_ids"])[0]
        new_id = vocab[byte_level]
        if new_id < len(base):
            continue
        ids = decompose(byte_level, base.backend_tokenizer.model)
        assert len(ids) >= 2 and all(i < len(base) for i in ids)
        assert torch.equal(emb[new_id], before_in[ids].mean(dim=0))
        if not tied:  # the head's row comes from the head's old rows, not from the embedding
            assert torch.equal(head[new_id], before_out[ids].mean(dim=0))
            assert not torch.equal(head[new_id], emb[new_id])
        checked += 1
    assert checked == 3


def test_every_new_token_decomposes_into_old_ids(tmp_path: Path) -> None:
    model, base, merged, *_ , report = grown(tmp_path, tied=False)
    new = [t for t, i in merged.get_vocab().items() if i >= len(base)]
    assert len(new) == report.new_rows
    for token in new:
        ids = decompose(token, base.backend_tokenizer.model)
        assert base.convert_tokens_to_string(base.convert_ids_to_tokens(ids)) == \
            merged.convert_tokens_to_string([token])
