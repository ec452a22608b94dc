"""`dasi-tpu pretrain --dry-run`: the run config and the TPU launch of a cluster profile, printed."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def call_dry_run(tmp_path: Path, params_text: str, packed: Path) -> subprocess.CompletedProcess:
    """`dasi-tpu pretrain --dry-run` with a params file holding ``params_text``."""
    params = tmp_path / "params.yaml"
    params.write_text(params_text)
    argv = [
        Path(sys.executable).parent / "dasi-tpu",
        "pretrain",
        "--dry-run",
        "--packed",
        str(packed),
        "--params",
        str(params),
        "--profiles",
        str(REPO / "configs"),
        "--out",
        str(tmp_path / "ck"),
    ]
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)


def dry_run(tmp_path: Path, profile: str, packed: Path) -> str:
    out = call_dry_run(tmp_path, f"profile: {profile}\n", packed)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "ck").exists() and not (tmp_path / "logs").exists()  # nothing written
    return out.stdout


def test_gcloud_launch_of_kormo_10b(tmp_path, packed):
    text = dry_run(tmp_path, "kormo-10.8b", packed)
    ssh = next(line for line in text.splitlines() if line.startswith("gcloud compute tpus tpu-vm ssh"))
    args = shlex.split(ssh)
    assert "--worker=all" in args and "--zone=us-east5-a" in args and args[5] == "dasi-kormo-10b"
    remote = next(a for a in args if a.startswith("--command=")).removeprefix("--command=")
    assert "JAX_PLATFORMS=tpu .venv-maxtext/bin/python pretrain_tpu/maxtext_side.py train" in remote
    assert (
        "--blend-margin=5.0" in remote and "base_output_directory=gs://my-bucket/dasi/kormo-10.8b" in remote
    )
    assert "--accelerator-type=v5p-256" in text and "128 chips" in text
    # 1024 sequences per step over 128 chips; the 10.8B shape; bf16 compute, fp32 master weights
    for key in (
        "per_device_batch_size: 8.0",
        "base_emb_dim: 4096",
        "base_num_decoder_layers: 40",
        "base_num_kv_heads: 8",
        "base_mlp_dim: 16384",
        "vocab_size: 125184",
        "dtype: bfloat16",
        "scan_layers: true",
        "hardware: tpu",
        "lr_schedule_type: wsd",
        "ici_fsdp_parallelism: -1",
    ):
        assert key in text, key
    assert "skip_jax_distributed_system" not in text  # a TPU slice runs JAX's coordinator


def test_xpk_launch_of_kormo_1b(tmp_path, packed):
    text = dry_run(tmp_path, "kormo-1b", packed)
    line = next(line for line in text.splitlines() if line.startswith("xpk workload create"))
    args = shlex.split(line)
    assert {
        "--tpu-type=v6e-64",
        "--cluster=dasi-v6e",
        "--num-slices=1",
        "--docker-image=gcr.io/my-project/dasi-maxtext",
    } <= set(args)
    assert "per_device_batch_size: 8.0" in text  # 512 over 64 chips


def test_bad_tpu_type_stops_with_one_line(tmp_path, packed):
    out = call_dry_run(tmp_path, "profile: kormo-1b\npretrain_tpu: {cluster: {tpu_type: v5p}}\n", packed)
    assert out.returncode == 2 and "pretrain_tpu.cluster.tpu_type" in out.stderr, out.stderr


@pytest.mark.parametrize("profile", ["tiny", "kormo-1b", "kormo-10.8b"])
def test_every_profile_has_a_valid_tpu_section(profile):
    from dasi.config import resolve_params, validate_section
    from pretrain_tpu.config import PretrainTpuConfig

    tree = resolve_params(REPO / "params.yaml", REPO / "configs") if profile == "tiny" else None
    if tree is None:
        import yaml

        tree = yaml.safe_load((REPO / "configs" / f"{profile}.yaml").read_text())
    validate_section("pretrain_tpu", tree["pretrain_tpu"], PretrainTpuConfig)
