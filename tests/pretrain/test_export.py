import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dasi.config import ConfigError, validate_section
from dasi.integrity import IntegrityError
from dasi.model_config import ModelConfig, parameter_count
from pretrain.export import (
    END_TOKEN,
    INDEX_FILE,
    ExportConfig,
    ShardWriter,
    layer_to_hf,
    megatron_to_hf,
    parse_size,
    run,
)
from pretrain.stage import run as pretrain
from pretrain.worker import RecordLog
from tests.pretrain.conftest import small_cfg


def _export(model_cfg, packed, tokenizer_dir, tmp_path, parallel=None, cfg=None):
    train = small_cfg(train_steps=3, save_interval=3, **({"parallel": parallel} if parallel else {}))
    pretrain(model_cfg, train, packed, tmp_path / "ck", RecordLog(tmp_path / "train.jsonl"))
    out, metrics = tmp_path / "hf", tmp_path / "metrics" / "export.json"
    result = run(cfg or ExportConfig(), model_cfg, tmp_path / "ck", tokenizer_dir, out, metrics,
                 RecordLog(tmp_path / "export.jsonl"), manifest=packed)
    return result, out, metrics


def shard_files(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The tensors of each weights file named by ``out``'s index, checked against the index."""
    from safetensors.torch import load_file

    index = json.loads((out / INDEX_FILE).read_text())
    files = {f: load_file(out / f) for f in sorted(set(index["weight_map"].values()))}
    assert {name: f for f, tensors in files.items() for name in tensors} == index["weight_map"]
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size()
                                                  for tensors in files.values() for t in tensors.values())
    assert not (out / "model.safetensors").exists()
    return files


def test_export_writes_a_loadable_llama_with_parity(model_cfg, packed, tokenizer_dir, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = ExportConfig(max_shard_size="600KB")  # the tiny profile's: ~1.4 MB of fp32 weights in 3 files
    result, out, metrics = _export(model_cfg, packed, tokenizer_dir, tmp_path, cfg=cfg)
    assert result["max_abs_logit_diff"] < 1e-4 and result["passed"]
    files = shard_files(out)
    assert list(files) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert result["weight_files"] == 3 and result["dtype"] == "float32"
    assert all(len(tensors) == 1 or (out / f).stat().st_size <= 600_000 for f, tensors in files.items())
    assert {t.dtype for tensors in files.values() for t in tensors.values()} == {torch.float32}
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
    assert tok.chat_template
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


# -- streaming export from checkpoints of random models (no training) -------------------------


def random_checkpoint(root: Path, m: ModelConfig, bf16: bool = False, key: str = "model") -> dict:
    """Checkpoint step 1 of a randomly initialised model under top-level state-dict ``key`` (``model0``
    is what pipeline-parallel chunks are saved under); returns the model's fp32 state dict."""
    from megatron.core import dist_checkpointing

    from pretrain import checkpoint as ckpt
    from pretrain.model import build_gpt, distributed

    with distributed(tensor_parallel=1):
        gpt = build_gpt(m, bf16=bf16, use_te=False)
        if key == "model":
            ckpt.save(root, 1, gpt, None, None, {}, None)
        else:
            folder = ckpt.iter_dir(root, 1)
            folder.mkdir(parents=True)
            dist_checkpointing.save({key: gpt.sharded_state_dict(), "step": 1}, str(folder))
            ckpt.write_checksums(folder, "sha256")
            (root / ckpt.LATEST).write_text("1\n")
        return {k: v.detach().float().clone() for k, v in gpt.state_dict().items() if v is not None}


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return {k: v for tensors in shard_files(out).values() for k, v in tensors.items()}


def test_export_reads_a_checkpoint_saved_under_model0(model_cfg, tokenizer_dir, tmp_path) -> None:
    state = random_checkpoint(tmp_path / "ck", model_cfg, key="model0")
    result = run(ExportConfig(max_shard_size="600KB"), model_cfg, tmp_path / "ck", tokenizer_dir,
                 tmp_path / "hf", tmp_path / "export.json", RecordLog(tmp_path / "export.jsonl"))
    assert result["passed"] and result["max_abs_logit_diff"] < 1e-4
    weights, want = _weights(tmp_path / "hf"), megatron_to_hf(state, model_cfg)
    assert set(weights) == set(want)
    assert all(torch.equal(weights[k], want[k]) for k in want)


@pytest.mark.parametrize(("bf16_checkpoint", "dtype", "expected"),
                         [(True, "auto", torch.bfloat16), (False, "bfloat16", torch.bfloat16),
                          (True, "float32", torch.float32)])
def test_export_dtype(model_cfg, tokenizer_dir, tmp_path, bf16_checkpoint, dtype, expected) -> None:
    """auto keeps the checkpoint's (bf16 from a bf16 run); the parity check compares megatron with
    its weights rounded the same way, so it still holds at 1e-4."""
    state = random_checkpoint(tmp_path / "ck", model_cfg, bf16=bf16_checkpoint)
    out = tmp_path / "hf"
    result = run(ExportConfig(dtype=dtype, max_shard_size="300KB"), model_cfg, tmp_path / "ck", tokenizer_dir,
                 out, tmp_path / "export.json", RecordLog(tmp_path / "export.jsonl"))
    assert result["passed"] and result["max_abs_logit_diff"] < 1e-4
    weights = _weights(out)
    assert {t.dtype for t in weights.values()} == {expected}
    assert result["dtype"] == json.loads((out / "config.json").read_text())["dtype"] == str(expected)[6:]
    want = megatron_to_hf(state, model_cfg)
    assert all(torch.equal(weights[k], want[k].to(expected)) for k in want)


def test_max_shard_size_values() -> None:
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("600KB") == 600_000 and parse_size(" 1.5 mb ") == 1_500_000 and parse_size(4096) == 4096
    assert ExportConfig().max_shard_bytes == 5 * 10**9
    for bad in ("5XB", "GB", "0MB", -3):
        with pytest.raises(ConfigError) as err:
            validate_section("export", {"max_shard_size": bad}, ExportConfig)
        assert str(err.value).startswith(f"export.max_shard_size = {bad!r}: ") and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="^export.dtype = 'fp16': "):
        validate_section("export", {"dtype": "fp16"}, ExportConfig)


def test_shard_writer_packs_in_order_and_names_like_transformers(tmp_path) -> None:
    writer = ShardWriter(tmp_path, max_bytes=100)
    writer.add({"a": torch.zeros(10), "b": torch.zeros(10)}, torch.float32)  # 40 + 40 bytes
    writer.add({"big": torch.zeros(40, dtype=torch.float64)}, torch.float32)  # 160 bytes: a file of its own
    writer.add({"c": torch.zeros(5)}, torch.bfloat16)
    assert writer.close() == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    files = shard_files(tmp_path)
    assert [sorted(t) for t in files.values()] == [["a", "b"], ["big"], ["c"]]
    assert files["model-00002-of-00003.safetensors"]["big"].dtype == torch.float32
    assert not list(tmp_path.glob(".part-*"))
    single = tmp_path / "one"
    single.mkdir()
    writer = ShardWriter(single, max_bytes=100)
    writer.add({"a": torch.zeros(10)}, torch.float32)
    assert writer.close() == ["model.safetensors"] and not (single / INDEX_FILE).exists()


MEASURE = """
import json, sys
from pathlib import Path
import torch
from dasi.model_config import ModelConfig, parameter_count
from pretrain.export import CheckpointTensors, write_weights

def status(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024

m = ModelConfig.model_validate_json(sys.argv[1])
tensors = CheckpointTensors(Path(sys.argv[2]))
tensors.whole("decoder.final_layernorm.weight")  # the readers' imports, before measuring
Path(sys.argv[3]).mkdir()
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
before = status("VmRSS")
files = write_weights(tensors, m, Path(sys.argv[3]), torch.float32, int(sys.argv[4]))
print(json.dumps({"peak_extra": status("VmHWM") - before, "files": len(files)}))
"""


def test_streaming_export_holds_a_layer_and_a_shard_not_the_model(tmp_path) -> None:
    """Peak RSS while writing the weights of a 24-layer model (~310 MB fp32), measured in a fresh
    process: a few times a layer (12.6 MB: as read, as converted) plus a shard (16 MB: as held, as
    serialised), whatever the number of layers."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to reset the peak RSS")
    m = ModelConfig(hidden_size=512, num_layers=24, num_attention_heads=8, num_query_groups=4,
                    ffn_hidden_size=1536, vocab_size=2048, seq_length=64)
    random_checkpoint(tmp_path / "ck", m)
    model_bytes = 4 * parameter_count(m)
    layer_bytes = 4 * (parameter_count(m) - 2 * m.vocab_size * m.hidden_size - m.hidden_size) // m.num_layers
    shard_bytes = 16 * 10**6
    root = Path(__file__).resolve().parents[2]
    source = tmp_path / "ck" / "iter_0000001"
    args = [m.model_dump_json(), str(source), str(tmp_path / "hf"), str(shard_bytes)]
    done = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": ""}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"streaming export: peak RSS +{measured['peak_extra'] / 1e6:.1f} MB for {model_bytes / 1e6:.0f} MB "
          f"of weights in {measured['files']} files (a layer {layer_bytes / 1e6:.1f} MB, a shard "
          f"{shard_bytes / 1e6:.0f} MB)")
    assert measured["files"] > 15
    assert measured["peak_extra"] < 3 * (layer_bytes + shard_bytes) < model_bytes / 3


PIPELINE_SAVE = """
import sys
from pathlib import Path
import torch
from dasi.model_config import ModelConfig
from pretrain import checkpoint as ckpt
from pretrain.model import build_chunks, distributed
from tests.pretrain.conftest import small_cfg

def main():
    m = ModelConfig.model_validate_json(sys.argv[1])
    train = small_cfg(eval_iters=2, parallel={"pipeline_parallel": 2, "virtual_pipeline_parallel": 2})
    with distributed(pipeline_parallel=2, virtual_pipeline_parallel=2):
        chunks = build_chunks(m, train=train)
        assert ckpt.model_keys(len(chunks)) == ["model0", "model1"]
        ckpt.save(Path(sys.argv[2]), 1, chunks, None, None, {}, None)
        layers = {}  # each layer's local-spec tensors under its global index
        for chunk in chunks:
            for layer in chunk.decoder.layers:
                prefix = f"decoder.layers.{layer.layer_number - 1}."
                layers.update({prefix + k: v for k, v in layer.state_dict().items() if v is not None})
        torch.save(layers, Path(sys.argv[3]) / f"layers_{torch.distributed.get_rank()}.pt")

if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
def test_export_reads_an_interleaved_pipeline_checkpoint(model_cfg, tokenizer_dir, tmp_path) -> None:
    """Two gloo ranks, pipeline 2 x virtual 2: each rank saves chunks ``model0``/``model1`` holding
    layers at global offsets; the export puts every layer where its global index says."""
    m = ModelConfig.model_validate({**model_cfg.model_dump(), "num_layers": 4})
    (tmp_path / "save.py").write_text(PIPELINE_SAVE)
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(tmp_path / "save.py"), m.model_dump_json(), str(tmp_path / "ck"), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={"PYTHONPATH": str(root), "PATH": ""},
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = run(ExportConfig(max_shard_size="600KB"), m, tmp_path / "ck", tokenizer_dir, tmp_path / "hf",
                 tmp_path / "export.json", RecordLog(tmp_path / "export.jsonl"))
    assert result["passed"] and result["max_abs_logit_diff"] < 1e-4
    saved = {k: v for r in (0, 1) for k, v in torch.load(tmp_path / f"layers_{r}.pt").items()}
    weights = _weights(tmp_path / "hf")
    for i in range(m.num_layers):
        for name, tensor in layer_to_hf(saved, i, m).items():
            assert torch.equal(weights[name], tensor.float()), name
