"""Checkpoint retention: every K-th plus the last N, never the one ``latest`` names."""

import json

from dasi.runlog import LoggingConfig, RunLog, read_jsonl
from pretrain import checkpoint as ckpt
from pretrain.stage import fingerprint_parts, run
from tests.pretrain.conftest import small_cfg


def test_retained_keeps_the_last_n_the_multiples_and_latest() -> None:
    steps = [1, 2, 3, 4, 5, 6, 7]
    assert ckpt.retained(steps, None, 3, 7) == set(steps)  # the default keeps all
    assert ckpt.retained(steps, 2, 3, 7) == {3, 6, 7}
    assert ckpt.retained(steps, 1, None, 7) == ckpt.retained(steps, 1, 0, 7) == {7}
    assert ckpt.retained(steps, 1, None, 5) == {5, 7}  # latest is kept whatever it is


def test_a_run_keeps_exactly_what_retention_says(model_cfg, packed, tmp_path) -> None:
    cfg = small_cfg(train_steps=7, warmup_steps=2, save_interval=1, eval_interval=7, keep_last=2,
                    keep_every=3, verify_checkpoints="size")
    ck = tmp_path / "ck"
    logging = LoggingConfig(logs_dir=str(tmp_path / "logs"), wandb=False, tensorboard=False)
    with RunLog("pretrain", cfg, outputs=[ck], logging=logging) as log:
        run(model_cfg, cfg, packed, ck, log)
    assert ckpt.saved_steps(ck) == [3, 6, 7] and ckpt.latest_step(ck) == 7
    assert sorted(p.name for p in (ck / ckpt.HISTORY).iterdir()) == [
        "iter_0000003.json", "iter_0000006.json", "iter_0000007.json"]
    deleted = [e["step"] for e in read_jsonl(log.dir / "events.jsonl") if e["event"] == "checkpoint_deleted"]
    assert deleted == [1, 2, 4, 5]
    ckpt.verify(ckpt.iter_dir(ck, 7))
    # the checkpoint folder is recorded by sizes, as its checksums are (verify_checkpoints: size)
    assert json.loads((log.dir / "outputs.json").read_text())[str(ck)]["mode"] == "size"


def test_retention_does_not_enter_the_fingerprint(model_cfg, packed) -> None:
    from pretrain.pack import load_manifest

    manifest = load_manifest(packed)
    assert fingerprint_parts(model_cfg, small_cfg(), manifest) == \
        fingerprint_parts(model_cfg, small_cfg(keep_last=2, keep_every=5), manifest)


def test_a_background_save_writes_what_a_synchronous_one_does(model_cfg, packed, tmp_path):
    """async_save: the same checkpoint bytes (so a resume from it is a resume from the synchronous
    one), published with latest and retention by the time training ends."""
    import json

    from pretrain.stage import run
    from pretrain.worker import RecordLog
    from tests.pretrain.conftest import small_cfg

    sums = {}
    for background in (False, True):
        cfg = small_cfg(async_save=background, keep_last=1)
        ck = tmp_path / f"ck{background}"
        summary = run(model_cfg, cfg, packed, ck, RecordLog(tmp_path / f"{background}.jsonl"))
        assert ckpt.saved_steps(ck) == [6] and ckpt.latest_step(ck) == 6
        files = json.loads((ck / "iter_0000006" / ckpt.CHECKSUMS).read_text())
        sums[background] = (files, summary["final_train_loss"])
    assert sums[True] == sums[False]
