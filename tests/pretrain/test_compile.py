"""pretrain.compile: torch.compile'd transformer layers train the same function as eager ones
(CPU, float32, SdpaAttention as on GPU), and checkpoints keep their keys."""

from __future__ import annotations

import pytest
import torch

from dasi.model_config import ModelConfig
from pretrain.config import PretrainConfig
from pretrain.model import build_chunks, distributed

SHAPE = ModelConfig(hidden_size=64, num_layers=2, num_attention_heads=4, num_query_groups=2,
                    ffn_hidden_size=128, vocab_size=256, seq_length=32)


def _loss_and_grads(compile: bool) -> tuple[float, dict[str, torch.Tensor], list[str]]:
    cfg = PretrainConfig(train_steps=2, micro_batch_size=2, warmup_steps=1, compile=compile)
    with distributed(seed=cfg.seed):
        (model,) = build_chunks(SHAPE, sdpa=True, train=cfg)
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, SHAPE.vocab_size, (2, SHAPE.seq_length + 1), generator=g)
        positions = torch.arange(SHAPE.seq_length).expand(2, -1)
        loss = model(tokens[:, :-1], positions, None, labels=tokens[:, 1:]).float().mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        keys = list(model.state_dict())
    return loss.item(), grads, keys


@pytest.mark.slow
def test_compiled_layers_match_eager_loss_grads_and_state_dict_keys() -> None:
    torch._dynamo.reset()
    eager_loss, eager_grads, eager_keys = _loss_and_grads(compile=False)
    loss, grads, keys = _loss_and_grads(compile=True)
    assert keys == eager_keys  # Module.compile keeps the names checkpoints are saved under
    assert loss == pytest.approx(eager_loss, abs=1e-5)
    assert grads.keys() == eager_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_compile_wraps_every_decoder_layer() -> None:
    """Every decoder layer is compiled in place; the embedding and output layer are not."""
    cfg = PretrainConfig(train_steps=2, micro_batch_size=2, warmup_steps=1, compile=True)
    with distributed(seed=cfg.seed):
        (model,) = build_chunks(SHAPE, sdpa=True, train=cfg)
    assert all(layer._compiled_call_impl is not None for layer in model.decoder.layers)
    assert model.embedding._compiled_call_impl is None and model.output_layer._compiled_call_impl is None
