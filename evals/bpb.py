"""Bits per byte of a causal LM on raw text: summed token NLL / (ln 2 * UTF-8 bytes).

Each document is scored as ``[BOS] + tokens``; every text token is predicted exactly once. Texts
longer than the model's window are scored with a sliding window: windows of ``window`` tokens
advance by ``stride``, and only the tokens not scored by an earlier window count, so each token
after the first window sees at least ``window - stride`` tokens of context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class NLL:
    nll: float = 0.0  # nats, summed over predicted tokens
    tokens: int = 0
    bytes: int = 0
    docs: int = 0

    def add(self, other: NLL) -> None:
        self.nll += other.nll
        self.tokens += other.tokens
        self.bytes += other.bytes
        self.docs += other.docs

    @property
    def bpb(self) -> float:
        return self.nll / (math.log(2) * self.bytes) if self.bytes else math.nan

    @property
    def nll_per_token(self) -> float:
        return self.nll / self.tokens if self.tokens else math.nan


@torch.no_grad()
def token_nll(model: Any, ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """Summed NLL (nats) of ``ids[1:]`` given their prefixes, and the number of tokens scored."""
    if not 0 < stride <= window - 1:
        raise ValueError(f"need 0 < stride <= window - 1, got window={window} stride={stride}")
    device = next(model.parameters()).device
    seq = torch.tensor(ids, dtype=torch.long, device=device)
    n, total, scored, done = len(ids), 0.0, 0, 1  # done: index of the next token to score
    begin = 0
    while done < n:
        end = min(begin + window, n)
        x = seq[begin:end]
        logp = torch.log_softmax(model(input_ids=x[None], use_cache=False).logits[0, :-1].float(), dim=-1)
        first = done - begin - 1  # row of logp that predicts token `done`
        target = x[first + 1:]
        total -= logp[first:].gather(1, target[:, None]).sum().item()
        scored += len(target)
        done = end
        begin += stride
    return total, scored


def text_nll(model: Any, tok: Any, text: str, window: int, stride: int) -> NLL:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    nll, n = token_nll(model, [bos, *ids], window, stride)
    return NLL(nll=nll, tokens=n, bytes=len(text.encode("utf-8")), docs=1)


def texts_nll(model: Any, tok: Any, texts: dict[str, list[str]], window: int,
              stride: int | None = None) -> dict[str, NLL]:
    """The summed NLL of each language's documents (``stride`` defaults to half the window)."""
    stride = stride or max(1, window // 2)
    result = {}
    for lang, docs in texts.items():
        total = NLL()
        for text in docs:
            total.add(text_nll(model, tok, text, window, stride))
        result[lang] = total
    return result
