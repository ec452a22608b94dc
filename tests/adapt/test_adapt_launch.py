"""How an adaptation phase is launched: the launcher per profile, the torchrun command and sbatch
script (dry runs, also through the CLI), what the cluster profiles hand the Trainer, and a Slurm
job that ends badly (``sbatch``/``sacct`` are small scripts first on PATH, standing in for the
cluster: what is tested is our handling of what they print and return)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adapt import train
from adapt.config import AdaptConfig
from dasi import launch
from dasi.config import resolve_params, validate_section
from dasi.resume import STATE_FILE
from dasi.runlog import LoggingConfig, RunLog, read_jsonl
from dasi.stage import JobFailed
from tests.adapt.tiny import adapt_section, curated_dir, english_llama
from tests.conftest import REPO
from tests.faults import executable


def _cfg(**top: object) -> AdaptConfig:
    return AdaptConfig.model_validate({**adapt_section(Path("base")), **top})


def _profile(profile: str, tmp_path: Path) -> AdaptConfig:
    params = tmp_path / "params.yaml"
    params.write_text(f"profile: {profile}\n")
    return validate_section("adapt", resolve_params(params, REPO / "configs")["adapt"], AdaptConfig)


def test_dry_runs_name_the_worker_and_the_phase() -> None:
    two = _cfg(parallel={"gpus_per_node": 2})
    assert train.dry_run(two, "odd_layers", Path("runs")) == shlex.join([
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "adapt.worker", "--job", "runs/adapt-odd-layers/<run-id>/launch/job.json"])
    assert train.dry_run(_cfg(), "lora", Path("runs")) == (
        "in-process: one rank (adapt.parallel: 1 node x 1 GPU), no launcher")
    assert two.per_device_batch == 2 and _cfg().per_device_batch == 4


def test_cluster_profiles_shard_the_phases_over_eight_nodes(tmp_path: Path) -> None:
    tiny = _profile("tiny", tmp_path)
    assert launch.choose(tiny.parallel, resolve_params(REPO / "params.yaml", REPO / "configs")["launcher"]) \
        == "local"
    for profile in ("kormo-10.8b", "kormo-1b"):
        cfg = _profile(profile, tmp_path)
        assert launch.choose(cfg.parallel) == "slurm" and cfg.parallel.world_size == 64
        assert cfg.per_device_batch * cfg.train.grad_accum * cfg.parallel.world_size == cfg.train.batch_size
        script = train.dry_run(cfg, "lora", Path("logs"), "slurm")
        sbatch = [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH")]
        assert sbatch[:5] == [f"--job-name={profile}-adapt", "--partition=gpu", "--nodes=8",
                              "--ntasks-per-node=1", "--gpus-per-node=8"]
        assert "# no requeue: running the stage again resumes from the phase's last checkpoint" in script
        assert script.splitlines()[-1].endswith(
            "--nnodes=8 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=\"$MASTER_ADDR:29500\" "
            "--rdzv-id=\"$SLURM_JOB_ID\" -m adapt.worker --job 'logs/adapt-lora/<run-id>/launch/job.json'")
        (tmp_path / "a.sbatch").write_text(script)
        assert subprocess.run(["bash", "-n", str(tmp_path / "a.sbatch")]).returncode == 0
        # what the Trainer hands accelerate's FSDP plugin on a GPU node (on CPU it is not applied)
        args = train._args(cfg, "lora", tmp_path / "w", 10)
        plugin = args.fsdp_plugin_args
        assert (plugin["fsdp_version"], plugin["reshard_after_forward"], plugin["auto_wrap_policy"],
                plugin["transformer_cls_names_to_wrap"], plugin["state_dict_type"]) == (
            2, True, "TRANSFORMER_BASED_WRAP", "LlamaDecoderLayer", "FULL_STATE_DICT")
        assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (1, 8)


def test_cli_dry_run_prints_and_writes_nothing(tmp_path: Path) -> None:
    tiny = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    adapt = {**tiny["adapt"], "parallel": {"nodes": 1, "gpus_per_node": 2}}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "w.yaml").write_text(yaml.safe_dump(
        {"launcher": "local", "adapt": adapt, "logging": {"logs_dir": "runs", "wandb": False,
                                                           "tensorboard": False}}))
    (tmp_path / "params.yaml").write_text("profile: w\n")

    def dasi(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dasi.cli", "adapt-train", *args, "--dry-run"],
                              cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})

    done = dasi("even_layers")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(
        "--standalone --nproc-per-node=2 -m adapt.worker "
        "--job 'runs/adapt-even-layers/<run-id>/launch/job.json'")
    slurm = dasi("baseline", "--launcher", "slurm")
    assert "#SBATCH --job-name=dasi-adapt" in slurm.stdout and "#SBATCH --nodes=1" in slurm.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs", "params.yaml"]  # nothing written
    bad = dasi("lora", "--launcher", "mpi")
    assert bad.returncode == 2 and "launcher = 'mpi': allowed: local, torchrun, slurm" in bad.stderr


def test_a_failed_slurm_job_keeps_its_checkpoints_and_says_how_to_resume(tmp_path: Path, monkeypatch) -> None:
    """A fake sbatch: prints a job id, appends rank 0's records of one step to the job's records
    file and exits 1, as on TIMEOUT."""
    base, curated = english_llama(tmp_path / "base"), curated_dir(tmp_path / "curated")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "sbatch", """
records="$(dirname "${@: -1}")/records.jsonl"
echo 4242
echo '{"kind": "log", "metrics": {"train/loss": 6.5}, "step": 1}' >> "$records"
echo '{"kind": "event", "name": "trainer_setup", "data": {"world_size": 64}}' >> "$records"
exit 1
""")
    executable(bin_dir / "sacct", 'echo "TIMEOUT"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    cfg = AdaptConfig.model_validate({**adapt_section(base), "parallel": {"nodes": 2, "gpus_per_node": 2},
                                      "slurm": {"job_name": "a"}})
    work, metrics = tmp_path / "work", tmp_path / "metrics.json"
    metrics.write_text("{}")  # an earlier run's: not taken for this one's
    logging = LoggingConfig(logs_dir=str(tmp_path / "logs"), wandb=False, tensorboard=False)
    with pytest.raises(JobFailed) as failed, RunLog("adapt-odd-layers", cfg, logging=logging) as log:
        train.run(cfg, "odd_layers", base, curated, tmp_path / "out", work, metrics, log, launcher="slurm")
    assert str(failed.value) == (
        "adapt odd_layers: slurm job 4242 ended TIMEOUT (sbatch exit 1; output logs/slurm/a-4242.out); the "
        f"ranks' logs are in the run log ({log.dir}); running the stage again resumes from the phase's last "
        f"checkpoint in {work}")
    assert read_jsonl(log.dir / "metrics.jsonl")[0]["train/loss"] == 6.5  # replayed before the error
    events = {e["event"]: e for e in read_jsonl(log.dir / "events.jsonl")}
    assert events["trainer_setup"]["world_size"] == 64 and events["slurm_job"]["job_id"] == "4242"
    assert sorted(p.name for p in (log.dir / "launch").iterdir()) == ["adapt.sbatch", "job.json"]
    job = json.loads((log.dir / "launch" / "job.json").read_text())
    assert (job["arm"], job["latest"], job["base"]) == ("odd_layers", None, str(base.resolve()))
    assert (work / STATE_FILE).is_file()  # checked and recorded once, before the ranks start
    assert not metrics.exists() and not (tmp_path / "out").exists()
