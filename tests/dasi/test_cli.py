import subprocess
import sys

from tests.conftest import REPO


def dasi(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dasi.cli", *args], capture_output=True, text=True,
                          cwd=cwd)


def test_every_command_has_help():
    top = dasi("--help")
    assert top.returncode == 0
    for cmd in ("config", "teacher", "seeds", "generate", "plan", "sft-data", "curate", "tokenizer", "pack",
                "pretrain", "export",
                "sft", "evaluate", "release", "params", "count-params", "adapt-vocab", "adapt-train",
                "adapt-eval"):
        out = dasi(cmd, "--help")
        assert out.returncode == 0 and "Usage" in out.stdout, cmd


def test_kormo_launcher_dry_run_prints_the_slurm_job(tmp_path):
    (tmp_path / "params.yaml").write_text("profile: kormo-10.8b\n")
    out = dasi("pretrain", "--dry-run", "--params", str(tmp_path / "params.yaml"),
               "--profiles", str(REPO / "configs"), "--packed", str(tmp_path / "none.json"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "#SBATCH --nodes=16" in out.stdout and "--nproc-per-node=8" in out.stdout
    assert "pretrain.worker" in out.stdout
    assert not (tmp_path / "logs").exists() and not (tmp_path / "data").exists()  # nothing ran


def test_an_unknown_launcher_is_one_line_and_nothing_runs(tmp_path):
    for stage in ("pretrain", "generate"):
        out = dasi(stage, "--dry-run", "--launcher", "slurmm", "--params", str(REPO / "params.yaml"),
                   "--profiles", str(REPO / "configs"), cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("dasi: config error: launcher = 'slurmm': allowed:")
    assert not list(tmp_path.iterdir())


def test_count_params_for_kormo(tmp_path):
    (tmp_path / "params.yaml").write_text("profile: kormo-10.8b\n")
    out = dasi("count-params", "--params", str(tmp_path / "params.yaml"), "--profiles",
               str(REPO / "configs"))
    assert "10,756,624,384 parameters (10.757 B)" in out.stdout


def test_plan_generate_for_kormo(tmp_path):
    """The budget comes from the profile: 500k steps x 1024 x 4096 tokens, 35% Korean, 68.7%
    of that synthetic; the cost from the configured tokens/s per GPU."""
    import json

    (tmp_path / "params.yaml").write_text("profile: kormo-10.8b\n")
    out = dasi("plan", "generate", "--params", str(tmp_path / "params.yaml"), "--profiles",
               str(REPO / "configs"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout.strip().splitlines()[-1])
    tokens = 500_000 * 1024 * 4096
    assert plan["pretrain_tokens"] == tokens
    assert abs(plan["synthetic_ko_tokens"] - tokens * 0.35 * 0.687) < 1e3
    assert plan["requests"] == -(-int(plan["synthetic_ko_tokens"]) // 1200)
    assert abs(plan["gpu_hours"] - plan["synthetic_ko_tokens"] / 500 / 3600) < 1e-6 * plan["gpu_hours"]
    assert plan["wall_hours"] == plan["gpu_hours"] / (4 * 64)
    assert "GPU-hours" in out.stdout and not (tmp_path / "logs").exists()
