import json
import shutil

import pytest
import torch

from dasi.integrity import IntegrityError
from pretrain.export import END_TOKEN, ExportConfig, megatron_to_hf, run
from pretrain.stage import run as pretrain
from pretrain.worker import RecordLog
from tests.pretrain.conftest import small_cfg


def _export(model_cfg, packed, tokenizer_dir, tmp_path, parallel=None):
    cfg = small_cfg(train_steps=3, save_interval=3, **({"parallel": parallel} if parallel else {}))
    pretrain(model_cfg, cfg, packed, tmp_path / "ck", RecordLog(tmp_path / "train.jsonl"))
    out, metrics = tmp_path / "hf", tmp_path / "metrics" / "export.json"
    result = run(ExportConfig(), model_cfg, tmp_path / "ck", tokenizer_dir, out, metrics,
                 RecordLog(tmp_path / "export.jsonl"), manifest=packed)
    return result, out, metrics


def test_export_writes_a_loadable_llama_with_parity(model_cfg, packed, tokenizer_dir, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, out, metrics = _export(model_cfg, packed, tokenizer_dir, tmp_path)
    assert result["max_abs_logit_diff"] < 1e-4 and result["passed"]
    assert json.loads(metrics.read_text())["max_abs_logit_diff"] == result["max_abs_logit_diff"]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["rope_theta"] == model_cfg.rotary_base
    assert config["rms_norm_eps"] == model_cfg.norm_epsilon
    assert config["num_key_value_heads"] == model_cfg.num_query_groups
    assert config["tie_word_embeddings"] is False
    tok = AutoTokenizer.from_pretrained(out)
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.eos_token_id, tok.convert_tokens_to_ids(END_TOKEN)]
    assert gen["bos_token_id"] == tok.bos_token_id and gen["pad_token_id"] == tok.pad_token_id
    assert tok.chat_template and (out / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok("hello 안녕", return_tensors="pt")
    new = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert new.shape[1] > ids["input_ids"].shape[1]
    assert result["generated_tokens"] > 0


def test_qkv_and_fc1_split_follow_megatron_layout(model_cfg) -> None:
    """Rows of linear_qkv are per KV group [q..., k, v]; linear_fc1 rows are [gate, up]."""
    m, hd = model_cfg, model_cfg.head_dim
    g, qpg = m.num_query_groups, m.num_attention_heads // m.num_query_groups
    row_ids = torch.arange(g * (qpg + 2) * hd, dtype=torch.float32)
    sd = {"embedding.word_embeddings.weight": torch.zeros(m.vocab_size, m.hidden_size),
          "decoder.final_layernorm.weight": torch.ones(m.hidden_size),
          "output_layer.weight": torch.zeros(m.vocab_size, m.hidden_size)}
    for i in range(m.num_layers):
        p = f"decoder.layers.{i}."
        sd[p + "self_attention.linear_qkv.weight"] = row_ids[:, None].repeat(1, m.hidden_size)
        sd[p + "mlp.linear_fc1.weight"] = torch.cat([torch.zeros(m.ffn_hidden_size, m.hidden_size),
                                                     torch.ones(m.ffn_hidden_size, m.hidden_size)])
        for k in ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight",
                  "input_layernorm.weight", "pre_mlp_layernorm.weight"):
            sd[p + k] = torch.zeros(1)
    hf = megatron_to_hf(sd, m)
    q = hf["model.layers.0.self_attn.q_proj.weight"][:, 0]
    k = hf["model.layers.0.self_attn.k_proj.weight"][:, 0]
    block = (qpg + 2) * hd
    assert q[:hd].tolist() == list(range(hd))  # head 0 = first rows of group 0
    assert q[qpg * hd: qpg * hd + hd].tolist() == list(range(block, block + hd))  # first head of group 1
    assert k[:hd].tolist() == list(range(qpg * hd, qpg * hd + hd))
    assert hf["model.layers.0.mlp.gate_proj.weight"].sum() == 0
    assert hf["model.layers.0.mlp.up_proj.weight"].min() == 1


@pytest.mark.slow
def test_export_from_tensor_parallel_checkpoint(model_cfg, packed, tokenizer_dir, tmp_path) -> None:
    result, _, _ = _export(model_cfg, packed, tokenizer_dir, tmp_path, parallel={"tensor_parallel": 2})
    assert result["max_abs_logit_diff"] < 1e-4 and result["argmax_agreement"] == 1.0


def test_export_checks_checkpoint_and_packed_data_first(model_cfg, packed, tokenizer_dir, tmp_path) -> None:
    pretrain(model_cfg, small_cfg(train_steps=2, warmup_steps=1, save_interval=2), packed, tmp_path / "ck",
             RecordLog(tmp_path / "train.jsonl"))
    out, metrics = tmp_path / "hf", tmp_path / "export.json"

    def export(manifest):
        run(ExportConfig(), model_cfg, tmp_path / "ck", tokenizer_dir, out, metrics,
            RecordLog(tmp_path / "export.jsonl"), manifest=manifest)

    target = tmp_path / "ck" / "iter_0000002" / "common.pt"
    good = target.read_bytes()
    target.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(IntegrityError, match=rf"^{target}: sha256 differs"):
        export(packed)
    target.write_bytes(good)
    shutil.copytree(packed.parent, tmp_path / "packed")
    held_out = tmp_path / "packed" / "heldout_en" / "00000.bin"
    held_out.write_bytes(held_out.read_bytes()[:-2])
    with pytest.raises(IntegrityError, match=rf"^{held_out}: size"):
        export(tmp_path / "packed" / "manifest.json")
    assert not out.exists() and not metrics.exists()


def _te_names(sd: dict) -> dict:
    """``sd`` as Transformer Engine layers name it: each layer's norms fused into the next linear,
    plus TE's ``_extra_state`` entries."""
    from pretrain.export import NORM_KEYS

    out = {}
    for key, value in sd.items():
        for local, te in NORM_KEYS.items():
            if key.endswith("." + local):
                key = key[: -len(local)] + te
        out[key] = value
    for i in {int(k.split(".")[2]) for k in sd if k.startswith("decoder.layers.")}:
        for linear in ("self_attention.linear_qkv", "mlp.linear_fc1"):
            out[f"decoder.layers.{i}.{linear}._extra_state"] = None
    return out


def test_export_reads_transformer_engine_names(model_cfg, packed, tokenizer_dir, tmp_path) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from pretrain import checkpoint as ckpt
    from pretrain.export import llama_config
    from pretrain.model import build_gpt, distributed

    pretrain(model_cfg, small_cfg(train_steps=2, warmup_steps=1, save_interval=2), packed, tmp_path / "ck",
             RecordLog(tmp_path / "train.jsonl"))
    with distributed(tensor_parallel=1):
        gpt = build_gpt(model_cfg).float()
        ckpt.load(ckpt.iter_dir(tmp_path / "ck", 2), gpt, restore_rng=False)
        local = gpt.state_dict()
    te = _te_names(local)
    assert "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight" in te
    assert not any("input_layernorm" in k or "pre_mlp_layernorm" in k for k in te)
    cfg = llama_config(model_cfg, AutoTokenizer.from_pretrained(tokenizer_dir))
    ids = torch.randint(0, model_cfg.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    logits = []
    for sd in (local, te):
        hf = LlamaForCausalLM(cfg).eval()
        hf.load_state_dict(megatron_to_hf(sd, model_cfg))
        with torch.no_grad():
            logits.append(hf(ids).logits)
    assert (logits[0] - logits[1]).abs().max().item() <= 1e-6
    with pytest.raises(KeyError, match="input_layernorm.weight or .*linear_qkv.layer_norm_weight"):
        megatron_to_hf({k: v for k, v in te.items() if not k.endswith("linear_qkv.layer_norm_weight")},
                       model_cfg)
