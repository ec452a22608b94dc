"""Stage ``export``: a megatron-core checkpoint (any tensor-parallel size) -> a Hugging Face
``LlamaForCausalLM`` folder, checked for logit parity and for loading + generating."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, PositiveInt

from dasi.atomic import atomic_path, write_json
from dasi.integrity import VerifyMode
from dasi.model_config import ModelConfig
from dasi.strict import StrictModel

END_TOKEN = "<|end|>"


class ExportConfig(StrictModel):
    max_logit_diff: float = Field(1e-4, gt=0, description="fail when megatron and HF logits differ more")
    parity_tokens: PositiveInt = 64
    generate_tokens: PositiveInt = 8
    step: int | None = Field(None, description="checkpoint step; default: latest")
    verify_data: VerifyMode = Field("sha256", description="check packed files by sha256 or only size")


# A layer's norm weights under the local spec and, fused into the next linear, under Transformer
# Engine's (what build_gpt uses on a GPU with TE installed).
NORM_KEYS = {"input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
             "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight"}


def _norm(sd: dict[str, torch.Tensor], layer: str, local: str) -> torch.Tensor:
    for key in (layer + local, layer + NORM_KEYS[local]):
        if key in sd:
            return sd[key]
    raise KeyError(f"{layer + local} or {layer + NORM_KEYS[local]}: neither is in the state dict")


def megatron_to_hf(sd: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename and split a full (TP=1) megatron GPT state dict into LLaMA tensors; the layer norms
    are read under local-spec or Transformer Engine names, whichever the state dict holds.

    ``linear_qkv`` rows are grouped per KV group as [q heads of the group, k, v]; ``linear_fc1``
    rows are [gate, up].
    """
    hd, groups = m.head_dim, m.num_query_groups
    q_per_group = m.num_attention_heads // groups
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"],
           "model.norm.weight": sd["decoder.final_layernorm.weight"],
           "lm_head.weight": sd["output_layer.weight" if m.untie_embeddings
                                else "embedding.word_embeddings.weight"]}
    for i in range(m.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        qkv = sd[src + "self_attention.linear_qkv.weight"].reshape(groups, (q_per_group + 2) * hd, -1)
        q, k, v = qkv.split([q_per_group * hd, hd, hd], dim=1)
        gate, up = sd[src + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        out.update({
            dst + "self_attn.q_proj.weight": q.reshape(-1, m.hidden_size),
            dst + "self_attn.k_proj.weight": k.reshape(-1, m.hidden_size),
            dst + "self_attn.v_proj.weight": v.reshape(-1, m.hidden_size),
            dst + "self_attn.o_proj.weight": sd[src + "self_attention.linear_proj.weight"],
            dst + "mlp.gate_proj.weight": gate,
            dst + "mlp.up_proj.weight": up,
            dst + "mlp.down_proj.weight": sd[src + "mlp.linear_fc2.weight"],
            dst + "input_layernorm.weight": _norm(sd, src, "input_layernorm.weight"),
            dst + "post_attention_layernorm.weight": _norm(sd, src, "pre_mlp_layernorm.weight"),
        })
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


def llama_config(m: ModelConfig, tok: Any) -> Any:
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.ffn_hidden_size,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_query_groups, head_dim=m.head_dim, hidden_act="silu",
        max_position_embeddings=m.seq_length, rms_norm_eps=m.norm_epsilon, rope_theta=m.rotary_base,
        attention_bias=m.add_bias, mlp_bias=m.add_bias, tie_word_embeddings=not m.untie_embeddings,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        initializer_range=m.init_std, torch_dtype="float32")
    cfg.rope_theta = m.rotary_base  # kept as a top-level key whatever transformers' rope format
    return cfg


def _write_folder(folder: Path, weights: dict[str, torch.Tensor], m: ModelConfig,
                  tokenizer_dir: Path) -> None:
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if len(tok) > m.vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} tokens, model vocab_size {m.vocab_size}")
    end_id = tok.convert_tokens_to_ids(END_TOKEN)
    if end_id is None or end_id == tok.unk_token_id:
        raise ValueError(f"tokenizer in {tokenizer_dir} has no {END_TOKEN} token")
    folder.mkdir(parents=True)
    cfg = llama_config(m, tok)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(rope_theta=m.rotary_base, tie_word_embeddings=not m.untie_embeddings)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=[tok.eos_token_id, end_id],
                     pad_token_id=tok.pad_token_id).save_pretrained(folder)
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file():
            shutil.copy2(f, folder / f.name)


def _parity_ids(manifest: Path | None, m: ModelConfig, n: int, verify: VerifyMode) -> torch.Tensor:
    """Real packed tokens (checked against the manifest first) when a manifest is given, else a
    fixed random draw."""
    n = min(n, m.seq_length)
    if manifest is not None:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        from pretrain.pack import verify_manifest

        man = verify_manifest(manifest, verify)
        d = man.split("valid")[0]
        dataset = IndexedDataset(str(Path(manifest).parent / d.prefix))
        ids = dataset[0][:n].astype("int64")  # a copy: the mmap closes with ``dataset``
        return torch.from_numpy(ids).unsqueeze(0)
    return torch.randint(0, m.vocab_size, (1, n), generator=torch.Generator().manual_seed(0))


def run(cfg: ExportConfig, model_cfg: ModelConfig, checkpoints: Path, tokenizer_dir: Path, out: Path,
        metrics: Path, log: Any, manifest: Path | None = None) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pretrain import checkpoint as ckpt
    from pretrain.model import build_gpt, distributed

    step = cfg.step if cfg.step is not None else ckpt.latest_step(checkpoints)
    if step is None:
        raise FileNotFoundError(f"{checkpoints}: no 'latest' checkpoint (run pretrain first)")
    source = ckpt.iter_dir(checkpoints, step)
    ckpt.verify(source)
    ids = _parity_ids(manifest, model_cfg, cfg.parity_tokens, cfg.verify_data)
    with distributed(tensor_parallel=1):
        gpt = build_gpt(model_cfg).float()
        ckpt.load(source, gpt, restore_rng=False)
        gpt.eval()
        weights = megatron_to_hf(gpt.state_dict(), model_cfg)
        pos = torch.arange(ids.shape[1]).unsqueeze(0)
        with torch.no_grad():
            mg_logits = gpt(ids, pos, None).float()
    with atomic_path(out) as tmp:
        _write_folder(tmp, weights, model_cfg, tokenizer_dir)
        hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        with torch.no_grad():
            hf_logits = hf(ids).logits.float()
        diff = (hf_logits - mg_logits).abs().max().item()
        result = {"checkpoint_step": step, "max_abs_logit_diff": diff, "parity_tokens": ids.shape[1],
                  "parameters": sum(p.numel() for p in hf.parameters()),
                  "argmax_agreement": (hf_logits.argmax(-1) == mg_logits.argmax(-1)).float().mean().item()}
        if not diff < cfg.max_logit_diff:
            write_json(metrics, {**result, "passed": False})
            raise ValueError(f"export parity failed: max |logit diff| {diff:.3g} >= {cfg.max_logit_diff}")
        tok = AutoTokenizer.from_pretrained(tmp)
        prompt = tok.apply_chat_template([{"role": "user", "content": "안녕하세요"}],
                                         add_generation_prompt=True, return_tensors="pt", return_dict=True)
        gen = hf.generate(**prompt, max_new_tokens=cfg.generate_tokens, do_sample=False)
        result.update(generated_tokens=int(gen.shape[1] - prompt["input_ids"].shape[1]),
                      sample=tok.decode(gen[0, prompt["input_ids"].shape[1]:]), passed=True)
    write_json(metrics, result)
    log.log({k: v for k, v in result.items() if k != "sample"}, step=step)
    log.summary(result)
    return result
