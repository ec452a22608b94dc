from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapt.embed_init import decompose, init_new_rows
from adapt.vocab import merge_vocab, save_merged, train_korean_bpe
from tests.adapt.tiny import ENGLISH, english_llama, korean_texts


def merged_tokenizer(base_dir: Path, out: Path, vocab_size: int, max_new: int):
    from transformers import AutoTokenizer

    base = AutoTokenizer.from_pretrained(str(base_dir))
    korean = train_korean_bpe(korean_texts(), base.backend_tokenizer, vocab_size, 2)
    merged_json, _ = merge_vocab(json.loads(base.backend_tokenizer.to_str()), korean, max_new)
    save_merged(base_dir, merged_json, out)
    return base, AutoTokenizer.from_pretrained(str(out))


def grown(tmp_path: Path, tied: bool):
    """A tiny English Llama (its own byte-level BPE) grown by 200 Korean tokens."""
    from transformers import AutoModelForCausalLM

    base_dir = english_llama(tmp_path / "base", tied=tied)
    base, merged = merged_tokenizer(base_dir, tmp_path / "tok", 900, 200)
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
    assert model.config.vocab_size == len(merged)
    assert report.new_rows == 200 and report.tied is tied
    assert torch.equal(emb[: len(base)], before_in)  # old rows bit-identical
    assert torch.equal(head[: len(base)], before_out)
    assert (head is emb) is tied
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) is tied
    bpe, pieces = base.backend_tokenizer.model, 0
    for new_id in range(len(base), len(merged)):
        ids = decompose(new_id, merged, bpe)
        pieces += len(ids)
        assert len(ids) >= 2 and all(i < len(base) for i in ids)
        assert torch.equal(emb[new_id], before_in[ids].mean(dim=0))
        if not tied:  # the head's row comes from the head's old rows, not from the embedding
            assert torch.equal(head[new_id], before_out[ids].mean(dim=0))
            assert not torch.equal(head[new_id], emb[new_id])
    assert report.mean_pieces == round(pieces / 200, 4)


def test_a_known_syllable_is_the_mean_of_its_three_bytes(tmp_path: Path) -> None:
    """'의' (EC 9D 98) is a new token: its row is the float32 mean of the rows of its 3 bytes."""
    model, base, merged, before_in, *_ = grown(tmp_path, tied=False)
    (new_id,) = merged("의", add_special_tokens=False)["input_ids"]
    assert new_id >= len(base)
    byte_ids = base("의", add_special_tokens=False)["input_ids"]  # the English BPE: one id a byte
    assert len(byte_ids) == 3 and decompose(new_id, merged, base.backend_tokenizer.model) == byte_ids
    row = model.get_input_embeddings().weight[new_id]
    assert row.dtype == torch.float32
    assert torch.equal(row, (before_in[byte_ids[0]] + before_in[byte_ids[1]] + before_in[byte_ids[2]]) / 3)


def test_every_new_token_decomposes_into_the_same_bytes(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    base_dir = english_llama(tmp_path / "base")
    base, merged = merged_tokenizer(base_dir, tmp_path / "tok", 900, 200)
    for new_id in range(len(base), len(merged)):
        ids = decompose(new_id, merged, base.backend_tokenizer.model)
        assert "".join(base.convert_ids_to_tokens(ids)) == merged.convert_ids_to_tokens(new_id)
    # a token outside the byte alphabet would lose characters silently: refused
    odd = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    odd.add_tokens(["한글"])
    with pytest.raises(ValueError, match="does not decompose"):
        decompose(len(odd) - 1, odd, base.backend_tokenizer.model)


@pytest.mark.parametrize("tied", [False, True])
def test_english_logits_over_the_old_vocabulary_are_unchanged(tmp_path: Path, tied: bool) -> None:
    from transformers import AutoModelForCausalLM

    base_dir = english_llama(tmp_path / "base", tied=tied)
    base, merged = merged_tokenizer(base_dir, tmp_path / "tok", 900, 200)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir)).eval()
    ids = torch.tensor([base(ENGLISH)["input_ids"]])
    assert ids.equal(torch.tensor([merged(ENGLISH)["input_ids"]]))
    old_head = model.get_output_embeddings().weight.detach().clone()
    with torch.no_grad():
        before = model(ids).logits
        init_new_rows(model, merged, base, old_vocab=len(base))
        after = model(ids).logits
    assert torch.equal(model.get_output_embeddings().weight[: len(base)], old_head)
    # a head with more rows is another GEMM shape: on some hosts (an AVX-512 Xeon) it sums in
    # another order, so the old logits agree to rounding, not bit for bit
    assert after.shape[-1] == len(merged)
    torch.testing.assert_close(after[..., : len(base)], before, rtol=0, atol=1e-6)


def test_smollm2_grows_and_stays_tied(teachers_dir: Path, tmp_path: Path) -> None:
    """The real base: SmolLM2-135M-Instruct (tied), 300 new tokens."""
    from transformers import AutoModelForCausalLM

    base_dir = teachers_dir / "smollm2"
    base, merged = merged_tokenizer(base_dir, tmp_path / "tok", 2000, 300)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    before = model.get_input_embeddings().weight.detach().clone()
    report = init_new_rows(model, merged, base, old_vocab=len(base))
    assert report.tied and report.new_rows == 300 and report.mean_pieces >= 2
    emb = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is emb and emb.shape[0] == len(merged) == len(base) + 300
    assert model.config.vocab_size == len(merged) and torch.equal(emb[: len(base)], before)
    for new_id in (len(base), len(base) + 150, len(merged) - 1):
        parts = decompose(new_id, merged, base.backend_tokenizer.model)
        assert torch.equal(emb[new_id], before[parts].mean(dim=0))
