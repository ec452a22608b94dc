"""`dasi plan pretrain`: parameters against the built model, memory against the layout and against
the H100 measurements, throughput and budget arithmetic, the command's output."""

from __future__ import annotations

import copy
import json

import pytest
import yaml
from typer.testing import CliRunner

from dasi.config import resolve_params
from dasi.model_config import ModelConfig, parameter_count
from pretrain import plan
from pretrain.config import PretrainConfig
from pretrain.flops import flops_per_token
from tests.pretrain.conftest import ROOT

CONFIGS = ROOT / "configs"
GIB = 2**30


def tree(profile: str, tmp_path, **pretrain) -> dict:
    """The resolved parameter tree of ``profile``, ``pretrain`` keys overriding the profile's."""
    params = tmp_path / f"{profile}-params.yaml"
    params.write_text(yaml.safe_dump({"profile": profile, "pretrain": pretrain}))
    return resolve_params(params, CONFIGS)


def with_layout(t: dict, **parallel) -> dict:
    """``t`` with ``pretrain.parallel`` replaced (nodes and GPUs per node follow the world size)."""
    out = copy.deepcopy(t)
    out["pretrain"]["parallel"] = {"nodes": 1, **parallel}
    return out


def model_and_cfg(t: dict) -> tuple[ModelConfig, PretrainConfig]:
    return ModelConfig.model_validate(t["model"]), PretrainConfig.model_validate(t["pretrain"])


@pytest.mark.parametrize("profile", ["tiny", "kormo-1b", "kormo-10.8b"])
def test_parameters_match_parameter_count_and_the_meta_build(tmp_path, profile):
    from pretrain.model import build_gpt, distributed, tp_numel

    t = tree(profile, tmp_path)
    m = ModelConfig.model_validate(t["model"])
    p = plan.make_plan(t)["parameters"]
    with distributed():  # TP = PP = 1: the one rank holds the whole model
        gpt = build_gpt(m, meta=True)  # the meta device: 10.8B allocates nothing
        built = tp_numel(gpt)
        embedding_head = gpt.embedding.word_embeddings.weight.numel() + gpt.output_layer.weight.numel()
    assert p["total"] == built == parameter_count(m)
    assert p["embedding_and_head"] == embedding_head
    assert p["rest"] == built - embedding_head


def test_the_shapes_parameter_counts():
    counts = {name: parameter_count(ModelConfig.model_validate(yaml.safe_load(
        (CONFIGS / f"{name}.yaml").read_text())["model"])) for name in ("kormo-1b", "kormo-10.8b")}
    assert counts == {"kormo-1b": 1_519_454_208, "kormo-10.8b": 10_756_624_384}


def test_tensor_and_pipeline_parallel_split_the_parameters(tmp_path):
    t = tree("kormo-10.8b", tmp_path)
    m = ModelConfig.model_validate(t["model"])
    total, h, layers = parameter_count(m), m.hidden_size, m.num_layers
    replicated = 2 * h * layers + h  # RMSNorm weights: on every tensor-parallel rank
    one = plan.make_plan(with_layout(t, data_parallel=8))["memory_gib"]["first"]
    tp2 = plan.make_plan(with_layout(t, tensor_parallel=2, data_parallel=4))["memory_gib"]["first"]
    assert one["parameters"] == total
    assert 2 * tp2["parameters"] - replicated == total
    assert tp2["weights"] == pytest.approx((total + replicated) / 2 * 2 / GIB)  # bf16: 2 bytes
    assert tp2["grads"] == pytest.approx(2 * tp2["weights"])  # fp32 grad buffers
    pp2 = plan.make_plan(with_layout(t, pipeline_parallel=2, data_parallel=4))["memory_gib"]
    vocab = m.vocab_size * h
    per_layer = (total - 2 * vocab - h) // layers
    assert pp2["first"]["parameters"] == vocab + layers // 2 * per_layer
    assert pp2["first"]["parameters"] + pp2["last"]["parameters"] == total  # untied: no copy


def test_tied_embeddings_are_copied_to_the_last_pipeline_stage(tmp_path):
    t = tree("kormo-1b", tmp_path)
    t["model"]["untie_embeddings"] = False
    m = ModelConfig.model_validate(t["model"])
    one = plan.make_plan(with_layout(t, data_parallel=8))["memory_gib"]["first"]["parameters"]
    pp2 = plan.make_plan(with_layout(t, pipeline_parallel=2, data_parallel=4))["memory_gib"]
    assert one == parameter_count(m)
    copy_of_embedding = m.vocab_size * m.hidden_size
    assert pp2["first"]["parameters"] + pp2["last"]["parameters"] == one + copy_of_embedding


def test_the_optimizer_shards_over_data_and_context_parallel(tmp_path):
    t = tree("kormo-10.8b", tmp_path)
    total = parameter_count(ModelConfig.model_validate(t["model"]))

    def optimizer(**par) -> float:
        return plan.make_plan(with_layout(t, **par))["memory_gib"]["first"]["optimizer"]

    assert optimizer(data_parallel=8) == pytest.approx(total * 12 / 8 / GIB)  # fp32 main + Adam m, v
    assert optimizer(data_parallel=16) == pytest.approx(optimizer(data_parallel=8) / 2)
    assert optimizer(data_parallel=8, context_parallel=2) == pytest.approx(optimizer(data_parallel=16))
    t["pretrain"]["bf16"] = False  # fp32 weights are the main parameters: Adam's 8 bytes only
    assert optimizer(data_parallel=8) == pytest.approx(total * 8 / 8 / GIB)


def test_full_recompute_stores_less_than_selective_less_than_none(tmp_path):
    t = tree("kormo-10.8b", tmp_path)

    def activations(recompute: str, attention: str) -> float:
        t["pretrain"]["recompute"] = recompute
        return plan.make_plan(t, attention=attention)["memory_gib"]["first"]["activations"]

    none, selective, full = (activations(r, "unfused") for r in ("none", "selective", "full"))
    assert full < selective < none
    # the s x s matrices: 5 bytes x heads x s^2 x micro-batch / TP, per layer
    m, cfg = model_and_cfg(t)
    matrices = 5 * m.num_attention_heads * m.seq_length**2 * cfg.micro_batch_size / 2 * m.num_layers
    assert none - selective == pytest.approx(matrices / GIB)
    # fused attention never stores them: selective recompute saves nothing
    assert activations("full", "fused") < activations("selective", "fused") == activations("none", "fused")


def test_sequence_tensor_and_context_parallel_divide_the_activations(tmp_path):
    t = tree("kormo-1b", tmp_path)
    m, _ = model_and_cfg(t)

    def layer(**par) -> float:
        return plan.layer_activation_bytes(m, model_and_cfg(with_layout(t, **par))[1])

    base = layer(data_parallel=8)
    assert layer(tensor_parallel=4, sequence_parallel=True, data_parallel=2) == pytest.approx(base / 4)
    assert base / 4 < layer(tensor_parallel=4, data_parallel=2) < base  # without SP the norms' are whole
    assert layer(context_parallel=2, data_parallel=4) == pytest.approx(base / 2)
    h, kv, f = m.hidden_size, m.num_query_groups * m.head_dim, m.ffn_hidden_size
    assert base == 4 * m.seq_length * 2 * (4 * h + 2 * h + 2 * kv + 3 * f)  # micro-batch 4, bf16


def test_pipeline_stages_hold_the_micro_batches_in_flight(tmp_path):
    t = tree("kormo-10.8b", tmp_path)  # 8 micro-batches a step per DP rank at DP 64
    flat = plan.make_plan(with_layout(t, data_parallel=64))["memory_gib"]["first"]["activations"]
    pp4 = plan.make_plan(with_layout(t, pipeline_parallel=4, data_parallel=64))["memory_gib"]
    # 1F1B: the first stage holds p micro-batches of L/p layers, the last one
    assert pp4["first"]["micro_batches_in_flight"] == 4
    assert pp4["first"]["activations"] == pytest.approx(flat)
    assert pp4["last"]["activations"] == pytest.approx(flat / 4)
    assert pp4["first"]["loss"] == 0 < pp4["last"]["loss"]
    # interleaved: Korthikanti's factor 1 + (p - 1) / (p v)
    vpp = plan.make_plan(with_layout(t, pipeline_parallel=4, virtual_pipeline_parallel=5,
                                     data_parallel=64))["memory_gib"]["first"]["activations"]
    assert vpp == pytest.approx(flat * (1 + 3 / (4 * 5)))
    # fewer micro-batches than stages: only those are in flight
    few = plan.make_plan(with_layout(tree("kormo-10.8b", tmp_path, global_batch_size=256),
                                     pipeline_parallel=4, data_parallel=64))["memory_gib"]["first"]
    assert few["micro_batches_in_flight"] == 2


def test_the_plan_matches_the_h100_measurements():
    """The 1B stand-in on one H100 (benchmarks/pretrain_mfu.py): the plan against the peak
    max_memory_allocated of each recorded run."""
    from benchmarks.pretrain_mfu import KORMO_1B_STANDIN

    runs = [json.loads(line) for line in
            (ROOT / "benchmarks/results/2026-11-26-h100-pretrain_mfu.jsonl").read_text().splitlines()]
    assert len(runs) >= 5
    for run in runs:
        t = {"profile": "standin", "model": {**KORMO_1B_STANDIN, "seq_length": run["seq_length"]},
             "pretrain": {"train_steps": 10, "warmup_steps": 1, "bf16": True,
                          "micro_batch_size": run["micro_batch_size"],
                          "global_batch_size": run["micro_batch_size"] * run["micro_batches"]}}
        sdpa = run.get("core_attention") == "SdpaAttention"
        p = plan.make_plan(t, attention="fused" if sdpa else "unfused", fused_loss="fused-CE" in run["run"])
        ratio = p["memory_gib"]["first"]["total"] / run["max_memory_allocated_gib"]
        assert (0.98 < ratio < 1.01) if sdpa else (0.85 < ratio < 1.0), (run["run"], ratio)


def test_throughput_and_budget(tmp_path):
    t = tree("kormo-1b", tmp_path)
    m, cfg = model_and_cfg(t)
    p = plan.make_plan(t, mfu=0.5)
    per_gpu = 0.5 * 989e12 / flops_per_token(m)
    assert p["throughput"]["tokens_per_s_per_gpu"] == pytest.approx(per_gpu)
    budget = p["budget"]
    assert budget["tokens"] == cfg.train_steps * 512 * 4096 == pytest.approx(60e9, rel=1e-4)
    assert budget["gpus"] == 8
    assert budget["days"] == pytest.approx(budget["tokens"] / (per_gpu * 8) / 86400)
    assert budget["gpu_hours"] == pytest.approx(budget["days"] * 24 * 8)
    configured = plan.make_plan(tree("kormo-1b", tmp_path, peak_tflops=500.0), mfu=0.5)["throughput"]
    assert configured["peak_tflops"] == 500.0
    assert plan.make_plan(t, mfu=0.5, peak=400.0)["throughput"]["peak_tflops"] == 400.0


def test_kormo_10_8b_fits_80_gib_with_margin(tmp_path):
    t = tree("kormo-10.8b", tmp_path)
    p = plan.make_plan(t)
    peak = p["memory_gib"][p["peak_stage"]]["total"]
    assert p["fits"] and peak < 80 - 15, peak
    assert p["layout"]["gpus"] == 128 and p["layout"]["global_batch_size"] == 1024
    assert p["layout"]["tensor_parallel"] > 1 and p["layout"]["micro_batch_size"] == 2
    # the whole model on every GPU (DP 128) does not fit: it is the layout that makes it fit
    whole = plan.make_plan(with_layout(t, data_parallel=128, nodes=16))
    assert not whole["fits"] and whole["memory_gib"]["first"]["total"] > 80


@pytest.mark.parametrize("profile", ["kormo-1b", "kormo-10.8b"])
def test_the_command_prints_the_plan(tmp_path, profile):
    from dasi.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(f"profile: {profile}\n")
    args = ["plan", "pretrain", "--params", str(params), "--profiles", str(CONFIGS)]
    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0, table.output
    assert table.output.startswith(f"pretraining plan for profile {profile}\n")
    for words in ("parameters", "weights", "grads", "optimizer", "activations", "tokens/s/GPU", "days",
                  "fits in 80 GiB"):
        assert words in table.output
    as_json = CliRunner().invoke(app, [*args, "--json", "--mfu", "0.2", "--gpu-memory", "40"])
    p = json.loads(as_json.output)
    assert p["parameters"]["total"] == parameter_count(ModelConfig.model_validate(p["model"]))
    assert p["throughput"]["mfu"] == 0.2 and p["gpu_memory_gib"] == 40
    assert p["fits"] == (p["memory_gib"][p["peak_stage"]]["total"] <= 40)


def test_the_command_refuses_what_it_cannot_plan(tmp_path):
    from dasi.cli import app

    params = tmp_path / "params.yaml"
    params.write_text("profile: tiny\n")
    base = ["--params", str(params), "--profiles", str(CONFIGS)]
    assert CliRunner().invoke(app, ["plan", "training", *base]).exit_code == 2
    assert CliRunner().invoke(app, ["plan", "pretrain", "--attention", "flash", *base]).exit_code == 2
    assert CliRunner().invoke(app, ["plan", "pretrain", "--mfu", "1.5", *base]).exit_code == 2
