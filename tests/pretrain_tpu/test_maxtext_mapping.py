"""The HF <-> MaxText weight mapping (numpy, run here without MaxText) and the run's fingerprint guard."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dasi.resume import FingerprintMismatch
from pretrain_tpu import maxtext_side as side
from pretrain_tpu import train

CONFIG = {
    "hidden_size": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 2,
    "intermediate_size": 12,
    "num_hidden_layers": 3,
    "vocab_size": 20,
    "tie_word_embeddings": False,
}


def hf_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    e, h, k, d, f, v = 8, 4, 2, 2, 12, 20
    w = {"model.embed_tokens.weight": (v, e), "model.norm.weight": (e,), "lm_head.weight": (v, e)}
    for i in range(3):
        w |= {
            f"model.layers.{i}.self_attn.q_proj.weight": (h * d, e),
            f"model.layers.{i}.self_attn.k_proj.weight": (k * d, e),
            f"model.layers.{i}.self_attn.v_proj.weight": (k * d, e),
            f"model.layers.{i}.self_attn.o_proj.weight": (e, h * d),
            f"model.layers.{i}.mlp.gate_proj.weight": (f, e),
            f"model.layers.{i}.mlp.up_proj.weight": (f, e),
            f"model.layers.{i}.mlp.down_proj.weight": (e, f),
            f"model.layers.{i}.input_layernorm.weight": (e,),
            f"model.layers.{i}.post_attention_layernorm.weight": (e,),
        }
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in w.items()}


@pytest.mark.parametrize("scan", [False, True])
def test_round_trip_and_layout(scan):
    hf = hf_weights(np.random.default_rng(0))
    tree = side.hf_to_maxtext(hf, CONFIG, scan_layers=scan)
    back = side.maxtext_to_hf(tree, CONFIG)
    assert set(back) == set(hf)
    for name in hf:
        np.testing.assert_allclose(back[name], hf[name], rtol=1e-6, atol=1e-7, err_msg=name)
    layer = tree["decoder"]["layers"] if scan else tree["decoder"]["layers_1"]
    q = layer["self_attention"]["query"]["kernel"]
    q1 = q[:, 1] if scan else q
    assert q.shape == ((8, 3, 4, 2) if scan else (8, 4, 2))  # scanned: layers on axis 1
    # q (E, H, D), scaled by 1/sqrt(D): MaxText's llama2 attention does not scale q.k itself
    np.testing.assert_allclose(
        q1, hf["model.layers.1.self_attn.q_proj.weight"].T.reshape(8, 4, 2) / math.sqrt(2), rtol=1e-6
    )
    assert tree["decoder"]["logits_dense"]["kernel"].shape == (8, 20)


class Events:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def event(self, name: str, **data) -> None:
        self.seen.append(name)


def test_another_run_in_the_folder_is_refused(tmp_path):
    fp = {"config": "a", "data": "b", "init": "c"}
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / train.FINGERPRINT).write_text(json.dumps(fp))
    train._check_fingerprint(tmp_path / "ck", fp, restart=False, log=Events())  # same run: resumes
    with pytest.raises(FingerprintMismatch, match="other config"):
        train._check_fingerprint(tmp_path / "ck", {**fp, "config": "z"}, restart=False, log=Events())
    assert (tmp_path / "ck" / train.FINGERPRINT).exists()  # nothing deleted
    log = Events()
    train._check_fingerprint(tmp_path / "ck", {**fp, "config": "z"}, restart=True, log=log)
    assert not (tmp_path / "ck").exists() and log.seen == ["restart"]  # deleted, and said so
