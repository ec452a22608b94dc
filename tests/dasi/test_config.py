import subprocess
import sys

import pytest
import yaml

from dasi.config import ConfigError, resolve_params, validate_section
from dasi.model_config import ModelConfig, parameter_count
from tests.conftest import REPO


def write_params(tmp_path, data: dict):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_params_override_profile_key_by_key(tmp_path):
    p = write_params(tmp_path, {"profile": "tiny", "tokenizer": {"vocab_size": 1024}})
    tree = resolve_params(p, REPO / "configs")
    assert tree["tokenizer"]["vocab_size"] == 1024
    assert tree["tokenizer"]["min_frequency"] == 2  # untouched keys come from the profile


def test_unknown_profile_names_allowed_ones(tmp_path):
    p = write_params(tmp_path, {"profile": "huge"})
    with pytest.raises(ConfigError, match=r"profile = 'huge': allowed: kormo-10.8b, kormo-1b, tiny"):
        resolve_params(p, REPO / "configs")


def test_unknown_section_is_rejected(tmp_path):
    p = write_params(tmp_path, {"profile": "tiny", "tokeniser": {}})
    with pytest.raises(ConfigError, match="unknown section 'tokeniser'"):
        resolve_params(p, REPO / "configs")


def test_bad_value_gives_one_line_with_key_value_and_rule():
    from pretrain.tokenizer import TokenizerConfig

    with pytest.raises(ConfigError) as e:
        validate_section("tokenizer", {"vocab_size": -5, "sample_chars": {"ko": 10}}, TokenizerConfig)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("tokenizer.vocab_size = -5: ") and "greater than or equal to 300" in msg


def test_unknown_key_and_wrong_type():
    from data_gen.curate import CurateConfig

    with pytest.raises(ConfigError, match=r"curate.min_char: unknown key"):
        validate_section("curate", {"min_char": 3}, CurateConfig)
    with pytest.raises(ConfigError, match=r"curate.min_chars = 'many'"):
        validate_section("curate", {"min_chars": "many"}, CurateConfig)


def test_every_profile_validates_every_section(tmp_path):
    from adapt.config import AdaptConfig
    from dasi.release import ReleaseConfig
    from dasi.runlog import LoggingConfig
    from dasi.stage import load_stage
    from data_gen.curate import CurateConfig
    from data_gen.generate import GenerateConfig
    from data_gen.seeds import SeedsConfig
    from data_gen.sft_data import SftDataConfig
    from data_gen.teacher import TeachersConfig
    from evals.evaluate import EvaluateConfig
    from instruct.sft import SFTConfig
    from pretrain.config import PretrainConfig
    from pretrain.export import ExportConfig
    from pretrain.pack import PackConfig
    from pretrain.tokenizer import TokenizerConfig
    from pretrain_tpu.config import PretrainTpuConfig

    sections = {"teacher": TeachersConfig, "seeds": SeedsConfig, "generate": GenerateConfig,
                "sft_data": SftDataConfig,
                "curate": CurateConfig, "tokenizer": TokenizerConfig, "pack": PackConfig,
                "model": ModelConfig, "pretrain": PretrainConfig, "export": ExportConfig,
                "sft": SFTConfig, "evaluate": EvaluateConfig, "release": ReleaseConfig,
                "adapt": AdaptConfig, "logging": LoggingConfig, "pretrain_tpu": PretrainTpuConfig}
    for profile in ("tiny", "kormo-1b", "kormo-10.8b"):
        params = tmp_path / f"{profile}.yaml"
        params.write_text(f"profile: {profile}\n")
        tree = resolve_params(params, REPO / "configs")
        assert set(tree) - {"profile", "launcher", "description"} == set(sections)
        for name, model in sections.items():
            load_stage(name, model, params, REPO / "configs")


def test_kormo_parameter_count_is_10_76b():
    tree = yaml.safe_load((REPO / "configs" / "kormo-10.8b.yaml").read_text())
    n = parameter_count(ModelConfig.model_validate(tree["model"]))
    assert abs(n - 10.76e9) / 10.76e9 < 0.005
    assert n == 10_756_624_384


def test_tiny_parameter_count_by_hand():
    tree = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    m = ModelConfig.model_validate(tree["model"])
    h, v, f, kv = 64, 2048, 192, 2 * 16
    per_layer = h * h * 2 + 2 * h * kv + 3 * h * f + 2 * h
    assert parameter_count(m) == 2 * v * h + 2 * per_layer + h == 360_768


def test_model_config_rejects_indivisible_heads():
    with pytest.raises(ConfigError, match="divisible"):
        validate_section("model", {"hidden_size": 64, "num_layers": 1, "num_attention_heads": 6,
                                   "num_query_groups": 2, "ffn_hidden_size": 8, "vocab_size": 300,
                                   "seq_length": 8}, ModelConfig)


def test_cli_bad_param_stops_before_work_with_exit_2(tmp_path):
    (tmp_path / "params.yaml").write_text("profile: tiny\ntokenizer: {vocab_size: banana}\n")
    out = subprocess.run(
        [sys.executable, "-m", "dasi.cli", "tokenizer", "--params", str(tmp_path / "params.yaml"),
         "--profiles", str(REPO / "configs"), "--curated", str(tmp_path / "none.parquet")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines == ["dasi: config error: tokenizer.vocab_size = 'banana': "
                     "Input should be a valid integer, unable to parse string as an integer"]
    assert not (tmp_path / "logs").exists()  # no run was started
