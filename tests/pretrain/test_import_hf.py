"""HF Llama -> megatron checkpoint (pretrain.import_hf) and back through the export stage."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dasi.config import ConfigError
from dasi.model_config import ModelConfig
from pretrain import checkpoint as ckpt
from pretrain import import_hf
from pretrain.export import ExportConfig, megatron_to_hf
from pretrain.export import run as export
from pretrain.worker import RecordLog
from tests.pretrain.conftest import ROOT, dasi, last_line


def tied(m: ModelConfig) -> ModelConfig:
    return ModelConfig.model_validate({**m.model_dump(), "untie_embeddings": False})


def random_llama(folder: Path, m: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.float32,
                 max_shard_size: str | None = None, **overrides) -> Path:
    """A random ``LlamaForCausalLM`` of shape ``m`` saved as safetensors (sharded when
    ``max_shard_size`` is given); ``overrides`` change its config."""
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = dict(vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.ffn_hidden_size,
                  num_hidden_layers=m.num_layers, num_attention_heads=m.num_attention_heads,
                  num_key_value_heads=m.num_query_groups, max_position_embeddings=m.seq_length,
                  rms_norm_eps=m.norm_epsilon, rope_theta=m.rotary_base,
                  tie_word_embeddings=not m.untie_embeddings)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**fields, **overrides}))
    with torch.no_grad():  # norms away from 1 so that a swapped norm shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.to(dtype).save_pretrained(folder, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    return folder


def hf_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def token_ids(m: ModelConfig, n: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, m.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("tie", "sharded_input"), [(False, False), (True, True)],
                         ids=["untied-single-file", "tied-sharded"])
def test_hf_megatron_hf_round_trip_keeps_logits(model_cfg, tokenizer_dir, tmp_path, tie,
                                                sharded_input) -> None:
    m = tied(model_cfg) if tie else model_cfg
    src = random_llama(tmp_path / "src", m, max_shard_size="200KB" if sharded_input else None)
    assert (src / "model.safetensors.index.json").exists() == sharded_input
    log = RecordLog(tmp_path / "log.jsonl")

    report = import_hf.run(m, src, tmp_path / "ck", log)
    assert report["passed"] and report["max_abs_logit_diff"] < 1e-4 and report["argmax_agreement"] == 1.0
    assert json.loads((tmp_path / "ck" / import_hf.REPORT).read_text()) == report
    assert ckpt.latest_step(tmp_path / "ck") == 0
    assert ckpt.verify(ckpt.iter_dir(tmp_path / "ck", 0))["mode"] == "sha256"

    out = tmp_path / "hf"
    result = export(ExportConfig(max_shard_size="150KB"), m, tmp_path / "ck", tokenizer_dir, out,
                    tmp_path / "export.json", log)
    assert result["passed"] and result["weight_files"] > 1
    ids = token_ids(m)
    diff = (hf_logits(src, ids) - hf_logits(out, ids)).abs().max().item()
    assert diff < 1e-4
    before, after = import_hf.HFWeights(src), import_hf.HFWeights(out)
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(FileExistsError, match="exists; nothing was changed"):
        import_hf.run(m, src, tmp_path / "ck", log)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is tie


def test_hf_to_megatron_inverts_megatron_to_hf(model_cfg, tmp_path) -> None:
    src = random_llama(tmp_path / "src", model_cfg)
    hf = import_hf.HFWeights(src)
    back = megatron_to_hf(import_hf.hf_to_megatron(hf, model_cfg), model_cfg)
    assert set(back) == set(hf)
    for name, tensor in back.items():
        assert torch.equal(tensor, hf[name]), name


def test_a_shape_mismatch_stops_with_one_line(model_cfg, tmp_path) -> None:
    src = random_llama(tmp_path / "src", model_cfg, num_hidden_layers=3)
    with pytest.raises(ConfigError) as err:
        import_hf.run(model_cfg, src, tmp_path / "ck", RecordLog(tmp_path / "log.jsonl"))
    assert "\n" not in str(err.value)
    assert str(err.value) == (f"{src / 'config.json'}: num_hidden_layers = 3, expected 2 (model.num_layers): "
                              "the profile's model: section must have the HF model's shape")
    assert not (tmp_path / "ck").exists()
    config = {**json.loads((src / "config.json").read_text()), "num_hidden_layers": 2}
    llama31_rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}
    for change, message in [
            ({"tie_word_embeddings": True},
             "tie_word_embeddings = True, expected False (model.untie_embeddings is True)"),
            ({"rope_parameters": llama31_rope},
             f"rope_parameters = {llama31_rope!r}, expected None (plain RoPE only)"),
            ({"model_type": "mistral"}, "model_type = 'mistral', expected 'llama' (LLaMA models only)")]:
        (src / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ConfigError) as err:
            import_hf.check_config(src, model_cfg)
        assert message in str(err.value)


def test_bf16_weights_import_as_bf16_and_load_into_any_dtype(model_cfg, tmp_path) -> None:
    """A bf16 HF model becomes a bf16 checkpoint (exactly its weights); load_weights puts them into
    chunks built in fp32 or bf16."""
    from pretrain.model import build_gpt, distributed

    src = random_llama(tmp_path / "src", model_cfg, dtype=torch.bfloat16)
    report = import_hf.run(model_cfg, src, tmp_path / "ck", RecordLog(tmp_path / "log.jsonl"))
    assert report["dtype"] == "bfloat16" and report["max_abs_logit_diff"] < 1e-4
    want = import_hf.hf_to_megatron(import_hf.HFWeights(src), model_cfg)
    for bf16 in (False, True):
        with distributed(tensor_parallel=1):
            gpt = build_gpt(model_cfg, bf16=bf16, use_te=False)
            import_hf.load_weights(tmp_path / "ck", [gpt])
            params = dict(gpt.named_parameters())
        assert set(params) == set(want)
        for name, p in params.items():
            assert torch.equal(p.detach().float(), want[name].float()), name


def test_import_hf_command(model_cfg, tmp_path) -> None:
    """`dasi import-hf` writes the checkpoint and report; an existing output folder or a model of
    another shape stops with one line and changes nothing."""
    tiny = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "w.yaml").write_text(yaml.safe_dump(
        {"model": tiny["model"], "logging": {"logs_dir": "logs", "wandb": False, "tensorboard": False}}))
    (tmp_path / "params.yaml").write_text("profile: w\n")
    random_llama(tmp_path / "hf", model_cfg)
    random_llama(tmp_path / "hf4", model_cfg, num_hidden_layers=4)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(dasi("import-hf", *args), cwd=tmp_path, capture_output=True, text=True,
                              env={"PYTHONPATH": str(ROOT), "PATH": str(Path(sys.executable).parent)})

    done = cli("hf", "ck")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "max |logit diff|" in done.stdout
    assert json.loads((tmp_path / "ck" / "import.json").read_text())["passed"]
    again = cli("hf", "ck")
    assert again.returncode == 2 and "ck: exists; nothing was changed" in again.stderr
    bad = cli("hf4", "ck4")
    assert bad.returncode == 2 and not (tmp_path / "ck4").exists()
    assert last_line(bad.stderr) == ("dasi: config error: hf4/config.json: num_hidden_layers = 4, expected 2 "
                                     "(model.num_layers): the profile's model: section must have the HF "
                                     "model's shape")


TP2_CHECK = """
import json, sys
import torch
from dasi.model_config import ModelConfig
from pretrain import import_hf
from pretrain.model import build_gpt, distributed

def main():
    m = ModelConfig.model_validate_json(sys.argv[1])
    ids = torch.tensor(json.loads(sys.argv[3]))
    with distributed(tensor_parallel=2):
        gpt = build_gpt(m, use_te=False)
        import_hf.load_weights(sys.argv[2], [gpt])
        gpt.eval()
        with torch.no_grad():
            logits = gpt(ids, torch.arange(ids.shape[1]).unsqueeze(0), None)
        rank = torch.distributed.get_rank()
        torch.save(logits, f"{sys.argv[4]}/logits_{rank}.pt")

if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
def test_an_import_loads_at_tensor_parallel_2(model_cfg, tmp_path) -> None:
    """Two gloo ranks build the model at TP=2 and load the import: each rank's vocab half of the
    logits matches the HF model's."""
    src = random_llama(tmp_path / "src", model_cfg)
    import_hf.run(model_cfg, src, tmp_path / "ck", RecordLog(tmp_path / "log.jsonl"))
    ids = token_ids(model_cfg)
    (tmp_path / "check.py").write_text(TP2_CHECK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(tmp_path / "check.py"), model_cfg.model_dump_json(), str(tmp_path / "ck"),
           json.dumps(ids.tolist()), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""},
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    want = hf_logits(src, ids)
    half = model_cfg.vocab_size // 2
    for rank in range(2):
        got = torch.load(tmp_path / f"logits_{rank}.pt")
        assert (got - want[..., rank * half:(rank + 1) * half]).abs().max().item() < 1e-4


def test_hf_weights_reads_both_layouts(model_cfg, tmp_path) -> None:
    single = import_hf.HFWeights(random_llama(tmp_path / "one", model_cfg))
    sharded = import_hf.HFWeights(random_llama(tmp_path / "many", model_cfg, max_shard_size="100KB"))
    assert len({f.name for f in sharded.files.values()}) > 1
    assert set(single) == set(sharded)
    assert all(torch.equal(single[k], sharded[k]) for k in single)
    with pytest.raises(KeyError, match="no tensor 'nope'"):
        single["nope"]
    shutil.rmtree(tmp_path / "one")
    (tmp_path / "one").mkdir()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        import_hf.HFWeights(tmp_path / "one")
