from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from evals.bpb import NLL, text_nll, token_nll

KO = "대한민국은 민주공화국이다. 대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다. " * 4
EN = "The quick brown fox jumps over the lazy dog while the river runs past the old mill. " * 4


@pytest.fixture(scope="module")
def model_tok(tiny_model: Path):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model)).eval()
    return model, AutoTokenizer.from_pretrained(str(tiny_model))


def test_full_window_equals_one_forward_pass(model_tok) -> None:
    model, tok = model_tok
    ids = [tok.bos_token_id, *tok(EN[:200], add_special_tokens=False)["input_ids"]]
    assert 20 < len(ids) < 128
    nll, n = token_nll(model, ids, window=128, stride=64)
    with torch.no_grad():
        mean = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert n == len(ids) - 1
    assert nll == pytest.approx(mean * n, rel=1e-5)


@pytest.mark.parametrize(("window", "stride"), [(16, 8), (16, 15), (7, 1), (32, 31)])
def test_sliding_window_scores_every_token_once(model_tok, window: int, stride: int) -> None:
    model, tok = model_tok
    ids = [tok.bos_token_id, *tok(KO, add_special_tokens=False)["input_ids"]]
    assert len(ids) > 100
    full, n_full = token_nll(model, ids, window=len(ids), stride=len(ids) - 1)
    nll, n = token_nll(model, ids, window=window, stride=stride)
    assert n == n_full == len(ids) - 1
    # the first window's tokens are scored with identical context
    head, _ = token_nll(model, ids[:window], window=window, stride=stride)
    first, _ = token_nll(model, ids[:window], window=len(ids), stride=len(ids) - 1)
    assert head == pytest.approx(first, rel=1e-6)
    # a random model barely uses context: totals agree within a few percent, and are not equal
    assert nll == pytest.approx(full, rel=0.05)


def test_uniform_model_gives_log2_vocab_bits_per_token(tiny_model: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every next-token distribution is uniform over the vocab
    for text in (KO, EN):
        r = text_nll(model, tok, text, window=32, stride=16)
        n_tokens = len(tok(text, add_special_tokens=False)["input_ids"])
        assert r.tokens == n_tokens and r.bytes == len(text.encode("utf-8"))
        assert r.bpb == pytest.approx(n_tokens * math.log2(model.config.vocab_size) / r.bytes, rel=1e-5)
        assert r.nll_per_token == pytest.approx(math.log(model.config.vocab_size), rel=1e-5)


def test_aggregation_and_bad_stride(model_tok) -> None:
    model, tok = model_tok
    a, b = text_nll(model, tok, KO, 64, 32), text_nll(model, tok, EN, 64, 32)
    total = NLL()
    total.add(a)
    total.add(b)
    assert total.docs == 2 and total.bytes == a.bytes + b.bytes
    assert total.bpb == pytest.approx((a.nll + b.nll) / (math.log(2) * (a.bytes + b.bytes)))
    assert math.isnan(NLL().bpb)
    with pytest.raises(ValueError, match="stride"):
        token_nll(model, [1, 2, 3], window=4, stride=4)
