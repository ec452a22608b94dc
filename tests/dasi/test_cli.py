import subprocess
import sys

from tests.conftest import REPO


def dasi(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dasi.cli", *args], capture_output=True, text=True,
                          cwd=cwd)


def test_every_command_has_help():
    top = dasi("--help")
    assert top.returncode == 0
    for cmd in ("seeds", "generate", "sft-data", "curate", "tokenizer", "pack", "pretrain", "export",
                "sft", "evaluate", "release", "params", "count-params"):
        out = dasi(cmd, "--help")
        assert out.returncode == 0 and "Usage" in out.stdout, cmd


def test_kormo_launcher_dry_run_prints_the_slurm_job(tmp_path):
    (tmp_path / "params.yaml").write_text("profile: kormo-10.8b\n")
    out = dasi("pretrain", "--dry-run", "--params", str(tmp_path / "params.yaml"),
               "--profiles", str(REPO / "configs"), "--packed", str(tmp_path / "none.json"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "#SBATCH --nodes=16" in out.stdout and "--nproc-per-node=8" in out.stdout
    assert "pretrain.pretrain_worker" in out.stdout
    assert not (tmp_path / "logs").exists() and not (tmp_path / "data").exists()  # nothing ran


def test_count_params_for_kormo(tmp_path):
    (tmp_path / "params.yaml").write_text("profile: kormo-10.8b\n")
    out = dasi("count-params", "--params", str(tmp_path / "params.yaml"), "--profiles",
               str(REPO / "configs"))
    assert "10,756,624,384 parameters (10.757 B)" in out.stdout
