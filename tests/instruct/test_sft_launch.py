"""How SFT is launched: the launcher choice, the torchrun command and sbatch script (dry runs), the
profiles' FSDP settings, and a Slurm job that ends badly.

``sbatch`` and ``sacct`` are small scripts put first on PATH: they stand in for the cluster, and
what is tested is our handling of what they print and return."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dasi.config import ConfigError, resolve_params, validate_section
from dasi.runlog import LoggingConfig, RunLog, read_jsonl
from dasi.stage import JobFailed
from instruct import launch, stage
from instruct.config import SFTConfig
from instruct.sft import _trainer_args, fsdp_options
from tests.conftest import REPO
from tests.faults import executable


def _cfg(**kw) -> SFTConfig:
    return SFTConfig.model_validate(kw)


def _profile_sft(profile: str, tmp_path: Path) -> SFTConfig:
    params = tmp_path / "params.yaml"
    params.write_text(f"profile: {profile}\n")
    return validate_section("sft", resolve_params(params, REPO / "configs")["sft"], SFTConfig)


def test_the_launcher_follows_the_ranks() -> None:
    assert launch.choose(_cfg()) == "local"
    assert launch.choose(_cfg(), "torchrun") == "local"  # one rank needs no launcher
    assert launch.choose(_cfg(parallel={"gpus_per_node": 2})) == "torchrun"
    assert launch.choose(_cfg(parallel={"gpus_per_node": 2}), "slurm") == "slurm"
    assert launch.choose(_cfg(parallel={"nodes": 2, "gpus_per_node": 4})) == "slurm"  # nodes need Slurm
    assert _cfg(parallel={"nodes": 2, "gpus_per_node": 4}).parallel.world_size == 8


def test_torchrun_dry_run_is_the_command_run() -> None:
    cfg = _cfg(parallel={"gpus_per_node": 4})
    job = Path("logs/sft/r/launch/job.json")
    assert launch.dry_run(cfg, job) == shlex.join([
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
        "-m", "instruct.worker", "--job", "logs/sft/r/launch/job.json"])
    assert launch.dry_run(_cfg(), job).startswith("in-process: one rank")


def test_slurm_script_runs_one_torchrun_per_node(tmp_path: Path) -> None:
    cfg = _cfg(parallel={"nodes": 2, "gpus_per_node": 8},
               slurm={"partition": "h100", "account": "lab", "time": "12:00:00", "job_name": "sft-x",
                      "extra_sbatch": ["--mem=0"]})
    text = launch.dry_run(cfg, Path("/shared/logs/sft/r/launch/job.json"), "slurm")
    sbatch = [line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH")]
    assert sbatch == ["--job-name=sft-x", "--partition=h100", "--nodes=2", "--ntasks-per-node=1",
                      "--gpus-per-node=8", "--cpus-per-task=16", "--time=12:00:00", "--exclusive",
                      "--output=logs/slurm/%x-%j.out", "--no-requeue", "--account=lab", "--mem=0"]
    assert text.splitlines()[-1] == (
        "srun --kill-on-bad-exit=1 python -m torch.distributed.run --nnodes=2 --nproc-per-node=8 "
        '--rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:29500" --rdzv-id="$SLURM_JOB_ID" '
        "-m instruct.worker --job /shared/logs/sft/r/launch/job.json")
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in text
    script = tmp_path / "sft.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0  # valid bash


def test_cli_dry_run_prints_and_writes_nothing(tmp_path: Path) -> None:
    tiny = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    sft = {**tiny["sft"], "parallel": {"nodes": 2, "gpus_per_node": 4}}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "w.yaml").write_text(yaml.safe_dump(
        {"launcher": "local", "sft": sft, "logging": {"logs_dir": "runs", "wandb": False,
                                                       "tensorboard": False}}))
    (tmp_path / "params.yaml").write_text("profile: w\n")

    def dasi(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dasi.cli", "sft", *args, "--dry-run"], cwd=tmp_path,
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})

    done = dasi()
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --nodes=2" in done.stdout and "--nproc-per-node=4" in done.stdout
    assert "-m instruct.worker --job 'runs/sft/<run-id>/launch/job.json'" in done.stdout  # shell-quoted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs", "params.yaml"]  # nothing written
    bad = dasi("--launcher", "mpi")
    assert bad.returncode == 2 and "launcher = 'mpi': allowed: local, torchrun, slurm" in bad.stderr


def test_tiny_trains_in_process_and_kormo_shards_with_fsdp_on_slurm(tmp_path: Path) -> None:
    tiny = _profile_sft("tiny", tmp_path)
    assert launch.choose(tiny, resolve_params(REPO / "params.yaml", REPO / "configs")["launcher"]) == "local"
    assert fsdp_options(tiny) == (False, None, False)

    for profile in ("kormo-10.8b", "kormo-1b"):
        cfg = _profile_sft(profile, tmp_path)
        assert launch.choose(cfg, "slurm") == "slurm" and cfg.parallel.world_size == 8
        # what the Trainer hands accelerate's FSDP plugin on a GPU node (on CPU it is not applied)
        plugin = _trainer_args(cfg, tmp_path / "w").fsdp_plugin_args
        assert plugin["fsdp_version"] == 2
        assert plugin["reshard_after_forward"] is True  # full_shard
        assert plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert plugin["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
        assert plugin["state_dict_type"] == "FULL_STATE_DICT"  # save_model writes a whole HF model
        assert plugin["activation_checkpointing"] is True  # FSDP's, not the Trainer's as well
        assert _trainer_args(cfg, tmp_path / "w").gradient_checkpointing is False


def test_bad_fsdp_settings_stop_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^sft\.fsdp = 'full_shard hybrid_shard': .*unknown FSDP option"):
        validate_section("sft", {"fsdp": "full_shard hybrid_shard"}, SFTConfig)
    with pytest.raises(ConfigError, match=r"^sft\.fsdp = 'auto_wrap': .*exactly one sharding"):
        validate_section("sft", {"fsdp": "auto_wrap"}, SFTConfig)
    with pytest.raises(ConfigError, match=r"^sft\.fsdp_wrap_layer = 'LlamaDecoderLayer': .*needs sft\.fsdp"):
        validate_section("sft", {"fsdp_wrap_layer": "LlamaDecoderLayer"}, SFTConfig)
    with pytest.raises(ConfigError, match=r"^sft\.parallel\.gpus_per_node = 0"):
        validate_section("sft", {"parallel": {"gpus_per_node": 0}}, SFTConfig)


def test_a_failed_slurm_job_keeps_its_logs_and_says_so(tmp_path: Path, monkeypatch) -> None:
    """A fake sbatch: refuses like Slurm when logs/slurm/ is missing, else prints a job id, appends
    rank 0's records of one step to the job's records file and exits 1, as on TIMEOUT."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "sbatch", """
[ -d logs/slurm ] || { echo "sbatch: error: logs/slurm: no such folder" >&2; exit 9; }
records="$(dirname "${@: -1}")/records.jsonl"
echo 777
echo '{"kind": "log", "metrics": {"train/loss": 5.5}, "step": 1}' >> "$records"
echo '{"kind": "event", "name": "trainer_setup", "data": {"world_size": 16}}' >> "$records"
echo '{"kind": "log", "metrics": {"train/lo' >> "$records"
exit 1
""")
    executable(bin_dir / "sacct", 'echo "TIMEOUT"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(parallel={"nodes": 2, "gpus_per_node": 8}, slurm={"job_name": "s"})
    logging = LoggingConfig(logs_dir=str(tmp_path / "logs"), wandb=False, tensorboard=False)
    metrics = tmp_path / "metrics.json"
    metrics.write_text("{}")  # an earlier run's: not taken for this one's
    with pytest.raises(JobFailed) as failed, RunLog("sft", cfg, logging=logging) as log:
        stage.run(cfg, tmp_path / "base", None, [], tmp_path / "out", metrics, log, launcher="slurm")
    assert str(failed.value) == (
        "sft: slurm job 777 ended TIMEOUT (sbatch exit 1; output logs/slurm/s-777.out); the ranks' logs "
        f"are in the run log ({log.dir}); SFT keeps no checkpoints: running it again trains from the start")
    assert read_jsonl(log.dir / "metrics.jsonl")[0]["train/loss"] == 5.5  # replayed before the error
    events = {e["event"]: e for e in read_jsonl(log.dir / "events.jsonl")}
    assert events["trainer_setup"]["world_size"] == 16
    assert events["records_unreadable"]["lines"] == 1  # the line a killed rank cut off
    assert events["launch"]["launcher"] == "slurm" and events["slurm_job"]["job_id"] == "777"
    launched = log.dir / "launch"
    assert sorted(p.name for p in launched.iterdir()) == ["job.json", "sft.sbatch"]  # records replayed
    assert "#SBATCH --nodes=2" in (launched / "sft.sbatch").read_text()
    assert not metrics.exists() and not (tmp_path / "out").exists()
