import json
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from dasi.model_config import parameter_count
from dasi.runlog import read_jsonl
from pretrain import pretrain_ckpt as ckpt
from pretrain import pretrain_launch as launch
from pretrain.pretrain_config import PretrainConfig
from pretrain.pretrain_stage import run
from pretrain.pretrain_worker import RecordLog
from tests.pretrain.conftest import ROOT, runlog, small_cfg


def _losses(log_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(log_dir / "metrics.jsonl")}


def test_model_matches_parameter_count_and_refuses_small_vocab(model_cfg) -> None:
    from pretrain.model import build_gpt, distributed

    with distributed(1):
        gpt = build_gpt(model_cfg, tokenizer_vocab=model_cfg.vocab_size)
        assert sum(p.numel() for p in gpt.parameters()) == parameter_count(model_cfg)
        names = dict(gpt.named_parameters())
        assert "output_layer.weight" in names  # untied
        assert not any(n.endswith(".bias") for n in names)
        with pytest.raises(ValueError, match="tokenizer has"):
            build_gpt(model_cfg, tokenizer_vocab=model_cfg.vocab_size + 1)


def test_resume_continues_exactly(model_cfg, packed, tmp_path) -> None:
    cfg = small_cfg()
    with runlog(tmp_path / "a", cfg) as full:
        summary = run(model_cfg, cfg, packed, tmp_path / "ck_full", full)
    with runlog(tmp_path / "b", cfg) as first:
        run(model_cfg, cfg, packed, tmp_path / "ck_split", first, stop_at=3)
    assert ckpt.latest_step(tmp_path / "ck_split") == 3
    with runlog(tmp_path / "c", cfg) as second:
        resumed = run(model_cfg, cfg, packed, tmp_path / "ck_split", second)
    straight, split = _losses(full.dir), {**_losses(first.dir), **_losses(second.dir)}
    assert sorted(straight) == sorted(split) == [1, 2, 3, 4, 5, 6]
    for step in straight:
        assert split[step] == pytest.approx(straight[step], abs=1e-6), step
    events = read_jsonl(second.dir / "events.jsonl")
    assert events[0]["event"] == "resume" and events[0]["step"] == 3
    assert events[0]["consumed_samples"] == 3 * cfg.global_batch
    assert resumed["resumed_from"] == 3 and summary["final_valid_loss"] > 0
    # checkpoints: iter folders + latest written last, no temp folders left behind
    names = sorted(p.name for p in (tmp_path / "ck_full").iterdir() if p.name.startswith("iter_"))
    assert names == ["iter_0000003", "iter_0000006"]
    assert (tmp_path / "ck_full" / "latest").read_text().strip() == "6"
    rec = read_jsonl(full.dir / "metrics.jsonl")[0]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"} <= set(rec)


def test_tiny_training_reduces_loss(model_cfg, packed, tmp_path) -> None:
    cfg = small_cfg(train_steps=40, micro_batch_size=4, global_batch_size=4, warmup_steps=4,
                    eval_interval=20, save_interval=40)
    with runlog(tmp_path, cfg) as log:
        s = run(model_cfg, cfg, packed, tmp_path / "ck", log)
    losses = _losses(log.dir)
    assert len(losses) == 40
    assert s["final_train_loss"] < s["first_train_loss"] - 1.0
    assert s["final_valid_loss"] < s["first_train_loss"] - 0.5
    lrs = [r["lr"] for r in read_jsonl(log.dir / "metrics.jsonl")]
    assert max(lrs) == pytest.approx(cfg.lr) and lrs[-1] < lrs[10]  # warmup then cosine decay


def test_wsd_schedule_holds_then_decays(model_cfg, packed, tmp_path) -> None:
    cfg = small_cfg(train_steps=8, warmup_steps=2, lr_schedule="wsd", wsd_decay_steps=3, save_interval=8)
    with runlog(tmp_path, cfg) as log:
        run(model_cfg, cfg, packed, tmp_path / "ck", log)
    lrs = [r["lr"] for r in read_jsonl(log.dir / "metrics.jsonl")]
    assert lrs[2] == lrs[3] == lrs[4] == pytest.approx(cfg.lr)
    assert lrs[5] > lrs[6] > lrs[7]


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValidationError, match="multiple"):
        PretrainConfig(train_steps=10, micro_batch_size=3, global_batch_size=4)
    with pytest.raises(ValidationError, match="warmup"):
        PretrainConfig(train_steps=10, micro_batch_size=1, warmup_steps=10)
    with pytest.raises(ValidationError, match="extra"):
        PretrainConfig(train_steps=10, micro_batch_size=1, learning_rate=1.0)


def test_launchers(tmp_path) -> None:
    one = small_cfg()
    assert launch.choose(one) == "local"
    two = small_cfg(parallel={"tensor_parallel": 2})
    cmd = launch.torchrun_command(two, tmp_path / "job.json")
    assert launch.choose(two) == "torchrun" and "--nproc-per-node=2" in cmd
    assert cmd[-3:] == ["pretrain.pretrain_worker", "--job", str(tmp_path / "job.json")]
    big = small_cfg(global_batch_size=32, parallel={"tensor_parallel": 8, "data_parallel": 16, "nodes": 16},
                    slurm={"partition": "h100", "account": "kormo"})
    text = launch.dry_run(big, Path("job.json"), "slurm")
    assert "#SBATCH --nodes=16" in text and "#SBATCH --gpus-per-node=8" in text
    assert "#SBATCH --partition=h100" in text and "#SBATCH --account=kormo" in text
    assert "srun" in text and "--nnodes=16" in text and "--nproc-per-node=8" in text
    with pytest.raises(ValidationError):
        small_cfg(parallel={"tensor_parallel": 2, "data_parallel": 3, "nodes": 2})


@pytest.mark.slow
@pytest.mark.parametrize("layout", [{"tensor_parallel": 2}, {"data_parallel": 2}])
def test_two_processes_match_one(model_cfg, packed, tmp_path, layout) -> None:
    one = small_cfg(train_steps=2, warmup_steps=1, save_interval=2)
    two = small_cfg(train_steps=2, warmup_steps=1, save_interval=2, parallel=layout)
    ref = run(model_cfg, one, packed, tmp_path / "ck1", RecordLog(tmp_path / "one.jsonl"))
    got = run(model_cfg, two, packed, tmp_path / "ck2", RecordLog(tmp_path / "two.jsonl"))
    assert got["world_size"] == 2
    assert got["first_train_loss"] == pytest.approx(ref["first_train_loss"], abs=1e-5)
    assert got["final_train_loss"] == pytest.approx(ref["final_train_loss"], abs=1e-4)
    assert ckpt.latest_step(tmp_path / "ck2") == 2
    job = json.loads((tmp_path / "ck2" / "job.json").read_text())
    assert job["pretrain"]["parallel"] == two.parallel.model_dump(mode="json")


def test_worker_module_is_spawn_safe() -> None:
    src = Path(sys.modules["pretrain.pretrain_worker"].__file__).read_text()
    assert 'if __name__ == "__main__":' in src
    assert torch.distributed.is_available()


def test_kormo_profile_builds_on_meta_device_with_exact_count() -> None:
    import resource

    import yaml

    from dasi.model_config import ModelConfig, parameter_count
    from pretrain.model import build_gpt, distributed

    tree = yaml.safe_load((ROOT / "configs" / "kormo-10.8b.yaml").read_text())
    m = ModelConfig.model_validate(tree["model"])
    with distributed(1, 0):
        gpt = build_gpt(m, meta=True)  # raises unless its size equals parameter_count(m)
        params = list(gpt.parameters())
    assert {p.device.type for p in params} == {"meta"}
    assert sum(p.numel() for p in params) == parameter_count(m) == 10_756_624_384
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 8 * 1024 * 1024  # KiB: < 8 GiB


def test_a_finished_run_is_redone_not_silently_reused(model_cfg, packed, tmp_path) -> None:
    cfg = small_cfg(train_steps=3, warmup_steps=1, save_interval=3)
    with runlog(tmp_path / "a", cfg) as first:
        a = run(model_cfg, cfg, packed, tmp_path / "ck", first)
    with runlog(tmp_path / "b", cfg) as again:
        b = run(model_cfg, cfg, packed, tmp_path / "ck", again)
    assert read_jsonl(again.dir / "events.jsonl")[0]["event"] == "redo_finished_output"
    assert b["resumed_from"] == 0 and b["final_train_loss"] == pytest.approx(a["final_train_loss"])
    assert sorted(_losses(again.dir)) == [1, 2, 3]


def test_a_run_cut_off_after_its_last_checkpoint_is_redone(model_cfg, packed, tmp_path) -> None:
    import json

    cfg = small_cfg(train_steps=2, warmup_steps=1, save_interval=2)
    with runlog(tmp_path / "a", cfg) as first:
        run(model_cfg, cfg, packed, tmp_path / "ck", first)
    state = tmp_path / "ck" / "_state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "complete": False}))
    with runlog(tmp_path / "b", cfg) as again:
        b = run(model_cfg, cfg, packed, tmp_path / "ck", again)
    assert read_jsonl(again.dir / "events.jsonl")[0]["event"] == "redo_finished_output"
    assert b["final_train_loss"] is not None
