import ast
import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from dasi.integrity import IntegrityError
from dasi.model_config import parameter_count
from dasi.resume import FingerprintMismatch
from dasi.runlog import read_jsonl
from pretrain import checkpoint as ckpt
from pretrain import launch
from pretrain.config import PretrainConfig
from pretrain.stage import HISTORY_KEYS, SUMMARY, code_files, fingerprint_parts, run
from pretrain.worker import RecordLog
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


def _events(log_dir: Path) -> dict[str, dict]:
    return {e["event"]: e for e in read_jsonl(log_dir / "events.jsonl")}


def _digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative path, but those under ``skip``."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).parts[0] not in skip}


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
    assert split == straight  # bit for bit
    resume = _events(second.dir)["resume"]
    assert resume["step"] == 3 and resume["consumed_samples"] == 3 * cfg.global_batch
    # the summary describes the whole run: first loss of step 1, wall time of both launches
    assert {k: v for k, v in resumed.items() if k not in HISTORY_KEYS} == \
        {k: v for k, v in summary.items() if k not in HISTORY_KEYS}
    assert resumed["first_train_loss"] == straight[1] and resumed["final_train_loss"] == straight[6]
    assert (summary["segments"], resumed["segments"]) == (1, 2)
    history = json.loads(ckpt.history_file(tmp_path / "ck_split", 3).read_text())
    assert resumed["train_wall_s"] > history["train_wall_s"] > 0
    assert summary["layer_spec"] == "local"
    assert _events(full.dir)["transformer_engine_unavailable"]["reason"] == "no CUDA device"
    # checkpoints: the same bytes whether or not the run was interrupted (timing lives in history/)
    assert _digest(tmp_path / "ck_split", skip=("history",)) == \
        _digest(tmp_path / "ck_full", skip=("history",))
    names = sorted(p.name for p in (tmp_path / "ck_full").iterdir() if p.name.startswith("iter_"))
    assert names == ["iter_0000003", "iter_0000006"]  # no temp folders left behind
    assert (tmp_path / "ck_full" / "latest").read_text().strip() == "6"
    sums = json.loads((tmp_path / "ck_full" / "iter_0000006" / ckpt.CHECKSUMS).read_text())
    assert {"common.pt", ".metadata", "rng/rank_00000.pt"} <= set(sums["files"]) and sums["mode"] == "sha256"
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
    assert cmd[-3:] == ["pretrain.worker", "--job", str(tmp_path / "job.json")]
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
    src = Path(sys.modules["pretrain.worker"].__file__).read_text()
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


def test_a_finished_run_is_reused_not_retrained(model_cfg, packed, tmp_path) -> None:
    cfg = small_cfg(train_steps=3, warmup_steps=1, save_interval=3)
    with runlog(tmp_path / "a", cfg) as first:
        a = run(model_cfg, cfg, packed, tmp_path / "ck", first)
    before = _digest(tmp_path / "ck")
    with runlog(tmp_path / "b", cfg) as again:
        b = run(model_cfg, cfg, packed, tmp_path / "ck", again)
    assert _events(again.dir)["reuse_finished"]["step"] == 3
    assert b == a and not _losses(again.dir)  # same summary, not a step trained
    assert _digest(tmp_path / "ck") == before  # nothing deleted, nothing rewritten


def test_a_run_cut_off_after_its_last_checkpoint_finishes_from_it(model_cfg, packed, tmp_path) -> None:
    cfg = small_cfg(train_steps=2, warmup_steps=1, save_interval=2)
    with runlog(tmp_path / "a", cfg) as first:
        a = run(model_cfg, cfg, packed, tmp_path / "ck", first)
    summary_file = tmp_path / "ck" / SUMMARY
    stored = summary_file.read_bytes()
    summary_file.unlink()  # as if killed between the last checkpoint and the summary
    with runlog(tmp_path / "b", cfg) as again:
        b = run(model_cfg, cfg, packed, tmp_path / "ck", again)
    assert _events(again.dir)["resume"]["step"] == 2 and not _losses(again.dir)
    assert b == a and summary_file.read_bytes() == stored


def test_other_settings_stop_the_run_and_delete_nothing_until_restart(model_cfg, packed, tmp_path) -> None:
    cfg = small_cfg(train_steps=2, warmup_steps=1, save_interval=1)
    with runlog(tmp_path / "a", cfg) as first:
        run(model_cfg, cfg, packed, tmp_path / "ck", first)
    before = _digest(tmp_path / "ck")
    other = small_cfg(train_steps=2, warmup_steps=1, save_interval=1, lr=1e-3)
    with runlog(tmp_path / "b", other) as log, pytest.raises(FingerprintMismatch) as e:
        run(model_cfg, other, packed, tmp_path / "ck", log)
    assert str(e.value) == (
        f"{tmp_path / 'ck'} holds 2 checkpoints (iter_0000001 .. iter_0000002) made from other inputs "
        "(changed: optimisation); nothing was deleted. To start over: dasi pretrain --restart or "
        "DASI_RESTART=1 dvc repro pretrain (deletes them), or move the folder away")
    assert _digest(tmp_path / "ck") == before
    # a save or eval interval, the parallel layout or the checks do not shape the weights
    same = small_cfg(train_steps=2, warmup_steps=1, save_interval=2, eval_interval=1,
                     verify_checkpoints="size")
    with runlog(tmp_path / "c", same) as log:
        assert run(model_cfg, same, packed, tmp_path / "ck", log)["segments"] == 1
    assert "reuse_finished" in _events(log.dir)
    with runlog(tmp_path / "d", other) as log:
        s = run(model_cfg, other, packed, tmp_path / "ck", log, restart=True)
    restart = _events(log.dir)["restart"]
    assert restart["checkpoints"] == ["iter_0000001", "iter_0000002"] and restart["files"] > 10
    assert s["segments"] == 1 and sorted(_losses(log.dir)) == [1, 2]


def test_fingerprint_names_the_part_that_changed(model_cfg, packed, tmp_path) -> None:
    from pretrain.pack import load_manifest

    cfg = small_cfg()
    base = fingerprint_parts(model_cfg, cfg, load_manifest(packed))
    repacked = load_manifest(packed).model_copy(update={"vocab_size": 2047})
    deeper = model_cfg.model_copy(update={"num_layers": 3})
    def changed(*args) -> list[str]:
        return [k for k, v in fingerprint_parts(*args).items() if v != base[k]]

    assert changed(model_cfg, cfg, repacked) == ["data"]
    assert changed(deeper, cfg, load_manifest(packed)) == ["model"]
    assert changed(model_cfg, small_cfg(min_lr=1e-4), load_manifest(packed)) == ["optimisation"]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    names |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
              for a in n.names}
    return names | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_code_fingerprint_covers_every_module_training_runs() -> None:
    """Walk the imports from the stage and the worker: each project module reached is hashed."""
    hashed = {p.resolve() for p in code_files()}
    todo, seen = ["pretrain.stage", "pretrain.worker"], set()
    while todo:
        mod = todo.pop()
        path = ROOT / (mod.replace(".", "/") + ".py")
        if mod in seen or not path.is_file():
            continue
        seen.add(mod)
        todo += [m for m in _imported_modules(path) if m.startswith(("pretrain.", "dasi."))]
    training = {ROOT / (m.replace(".", "/") + ".py") for m in seen if m.startswith("pretrain.")}
    assert training <= hashed and ROOT / "dasi" / "model_config.py" in hashed
    assert not {p.name for p in hashed} & {"export.py", "tokenizer.py"}


def _trained(model_cfg, packed, root: Path, cfg: PretrainConfig) -> Path:
    run(model_cfg, cfg, packed, root / "ck", RecordLog(root / "train.jsonl"))
    return root / "ck"


def test_a_damaged_checkpoint_stops_the_run_naming_the_file(model_cfg, packed, tmp_path) -> None:
    cfg = small_cfg(train_steps=2, warmup_steps=1, save_interval=2)
    ck = _trained(model_cfg, packed, tmp_path, cfg)
    target = ck / "iter_0000002" / "__0_0.distcp"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 1
    target.write_bytes(bytes(data))
    before = _digest(ck)
    with pytest.raises(IntegrityError, match=rf"^{target}: sha256 differs from the one \(recorded in "):
        run(model_cfg, cfg, packed, ck, RecordLog(tmp_path / "again.jsonl"))
    assert _digest(ck) == before
    (ck / "iter_0000002" / "rng" / "rank_00000.pt").unlink()
    with pytest.raises(IntegrityError, match=r"rng/rank_00000.pt: missing"):
        ckpt.verify(ck / "iter_0000002")
    (ck / "iter_0000002" / "stray.pt").write_bytes(b"x")
    with pytest.raises(IntegrityError, match=r"stray.pt: not listed in"):
        ckpt.verify(ck / "iter_0000002")


def test_resume_with_more_ranks_than_rng_files_names_the_missing_one(model_cfg, packed, tmp_path) -> None:
    ck = _trained(model_cfg, packed, tmp_path, small_cfg(train_steps=2, warmup_steps=1, save_interval=1))
    with pytest.raises(IntegrityError, match=r"rank_00001.pt: missing: the checkpoint holds the RNG "
                                             r"states of 1 ranks, this run has 2"):
        ckpt.check_rng_files(ck / "iter_0000001", world_size=2)


def test_an_unpublished_checkpoint_is_kept_when_equal_never_overwritten(model_cfg, packed, tmp_path) -> None:
    cfg = small_cfg(train_steps=4, warmup_steps=1, save_interval=2)
    ck = _trained(model_cfg, packed, tmp_path, cfg)
    final = _digest(ck / "iter_0000004")
    (ck / "latest").write_text("2\n")  # killed after iter_0000004 was renamed, before `latest`
    run(model_cfg, cfg, packed, ck, RecordLog(tmp_path / "again.jsonl"))
    assert _digest(ck / "iter_0000004") == final and ckpt.latest_step(ck) == 4
    (ck / "latest").write_text("2\n")
    sums = json.loads((ck / "iter_0000004" / ckpt.CHECKSUMS).read_text())
    sums["files"]["common.pt"]["sha256"] = "0" * 64  # as if it held another run's weights
    (ck / "iter_0000004" / ckpt.CHECKSUMS).write_text(json.dumps(sums))
    before = _digest(ck / "iter_0000004")
    with pytest.raises(IntegrityError, match=r"iter_0000004: exists with other content .* nothing was "):
        run(model_cfg, cfg, packed, ck, RecordLog(tmp_path / "third.jsonl"))
    assert _digest(ck / "iter_0000004") == before
