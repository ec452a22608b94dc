"""New embedding rows initialised by sub-token decomposition (RedWhale).

A new token's row is the mean of the rows of the base tokens it decomposes into. The
decomposition runs the base BPE model on the token's byte-level string, not on decoded text: a
byte-level token can stop inside a UTF-8 character. The input embedding and, when it is a matrix of
its own (untied), the output head are initialised each from its own old rows; old rows are left
bit-identical."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class InitReport:
    old_vocab: int
    new_rows: int
    tied: bool
    mean_pieces: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decompose(token_id: int, merged_tok: Any, base_bpe: Any) -> list[int]:
    """Base ids of the merged tokenizer's token ``token_id``: the base BPE model (``tokenizers``'
    ``Tokenizer.model``) run on the token's byte-level string."""
    token = merged_tok.convert_ids_to_tokens(token_id)
    pieces = base_bpe.tokenize(token)
    # a string the base alphabet cannot cover loses characters silently: refuse it instead
    if not pieces or "".join(p.value for p in pieces) != token:
        raise ValueError(f"adapt: token {token_id} ({token!r}) does not decompose into base tokens")
    return [p.id for p in pieces]


def init_new_rows(model: Any, merged_tok: Any, base_tok: Any, old_vocab: int) -> InitReport:
    """Grow ``model``'s embeddings to the merged tokenizer and set each new row (see the module)."""
    inp = model.get_input_embeddings().weight
    out_layer = model.get_output_embeddings()
    tied = out_layer is not None and out_layer.weight is inp
    old_in = inp.detach().clone()
    old_out = None if (tied or out_layer is None) else out_layer.weight.detach().clone()

    new_size = len(merged_tok)
    # mean_resizing=False: every new row is set below, so transformers' own init of them (a sample
    # around the old rows' mean) would only cost time. A model padded past its tokenizer keeps its
    # rows (the new ids overwrite unused padding).
    model.resize_token_embeddings(max(new_size, old_in.shape[0]), mean_resizing=False)
    inp = model.get_input_embeddings().weight
    out_w = None if (tied or out_layer is None) else model.get_output_embeddings().weight

    base_bpe = base_tok.backend_tokenizer.model
    pieces = 0
    with torch.no_grad():
        for new_id in range(old_vocab, new_size):
            ids = decompose(new_id, merged_tok, base_bpe)
            pieces += len(ids)
            inp[new_id] = old_in[ids].mean(dim=0)
            if out_w is not None:  # an untied head: its new rows from its own old rows
                out_w[new_id] = old_out[ids].mean(dim=0)
    if tied:
        model.tie_weights()
        if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
            raise RuntimeError("adapt: the resized model's output head is no longer tied to its embedding")
    rows = new_size - old_vocab
    return InitReport(old_vocab=old_vocab, new_rows=rows, tied=tied,
                      mean_pieces=round(pieces / rows, 4) if rows else 0.0)
