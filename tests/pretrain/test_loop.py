"""The training loop's policies: document masking, the loss monitor, extending a run, MFU logging."""

from __future__ import annotations

import math

import pytest
import torch

from dasi.config import ConfigError
from dasi.runlog import read_jsonl
from pretrain import checkpoint as ckpt
from pretrain import loop
from pretrain.loop import LossMonitor, TrainingStopped
from pretrain.stage import run
from tests.pretrain.conftest import runlog, small_cfg


def _events(log_dir, name: str) -> list[dict]:
    return [e for e in read_jsonl(log_dir / "events.jsonl") if e["event"] == name]


# -- document masking --------------------------------------------------------------------------

def _doc_logits(model_cfg, tokens: torch.Tensor, masking: bool) -> torch.Tensor:
    from megatron.core.datasets.gpt_dataset import _get_ltor_masks_and_position_ids

    from pretrain.model import build_gpt, distributed

    eod = 0
    with distributed(1, seed=7):
        gpt = build_gpt(model_cfg).eval()
        mask, _, positions = _get_ltor_masks_and_position_ids(tokens, eod, masking, masking, False, masking)
        with torch.no_grad():
            return gpt(tokens[None], positions[None], None if mask is None else mask[None])


def test_a_token_sees_only_its_own_document(model_cfg):
    """Changing the first document leaves every logit of the second unchanged, with masking; without
    it they change (so the comparison can fail)."""
    g = torch.Generator().manual_seed(0)
    s, cut = model_cfg.seq_length, 50
    a = torch.randint(1, model_cfg.vocab_size, (s,), generator=g)
    a[cut] = 0  # EOD: document 1 is tokens 0..cut, document 2 the rest
    b = a.clone()
    b[: cut] = torch.randint(1, model_cfg.vocab_size, (cut,), generator=g)
    masked = [_doc_logits(model_cfg, t, masking=True) for t in (a, b)]
    torch.testing.assert_close(masked[0][:, cut + 1:], masked[1][:, cut + 1:], atol=1e-6, rtol=0)
    assert not torch.allclose(masked[0][:, :cut], masked[1][:, :cut])
    plain = [_doc_logits(model_cfg, t, masking=False) for t in (a, b)]
    assert (plain[0][:, cut + 1:] - plain[1][:, cut + 1:]).abs().max() > 1e-3


def test_document_masking_reaches_the_batches(packed, tmp_path):
    from pretrain.data import batch, build_datasets
    from pretrain.model import distributed

    with distributed(1):
        train, _ = build_datasets(packed, 128, 8, 2, 1234, tmp_path / "cache", document_masking=True)
        plain, _ = build_datasets(packed, 128, 8, 2, 1234, tmp_path / "cache2")
    b = batch(train, 0, 8)
    assert b["attention_mask"].shape == (8, 1, 128, 128) and b["attention_mask"].dtype == torch.bool
    row, at = ((b["tokens"][:, :-1] == train.config.tokenizer.eod).nonzero()[0]).tolist()
    assert int(b["position_ids"][row, at + 1]) == 0  # positions restart after an EOD
    assert b["attention_mask"][row, 0, at + 1, : at + 1].all()  # and nothing before it is seen
    assert "attention_mask" not in batch(plain, 0, 2)


# -- the loss monitor ---------------------------------------------------------------------------

def test_loss_monitor_flags_non_finite_and_spikes_and_counts_skips():
    mon = LossMonitor(small_cfg(spike_factor=2.0, spike_window=3, max_skipped=1))
    assert mon.verdict(float("nan")) == "non-finite loss" and mon.verdict(math.inf) == "non-finite loss"
    for loss in (3.0, 3.0):
        assert mon.verdict(loss) is None
        mon.accept(loss)
    assert mon.verdict(100.0) is None  # the window is not full yet: no spike judged
    mon.accept(3.0)
    assert mon.verdict(6.5).startswith("loss spike (6.5 > 2.0 x mean 3")
    assert mon.skip() and not mon.skip()  # max_skipped 1: the second skip in a row is too many
    restored = LossMonitor(mon.cfg, mon.state())
    assert restored.state() == mon.state()


def _nan_at(monkeypatch, steps: set[int]) -> None:
    """Make the loss of the given (1-based) steps NaN: a diverged batch."""
    real, calls = loop._run_schedule, {"n": 0}

    def faulty(model, batches, micro, m, cfg, forward_only):
        loss = real(model, batches, micro, m, cfg, forward_only)
        if forward_only:
            return loss
        calls["n"] += 1
        return float("nan") if calls["n"] in steps else loss

    monkeypatch.setattr(loop, "_run_schedule", faulty)


def test_stop_policy_names_the_last_good_checkpoint(model_cfg, packed, tmp_path, monkeypatch):
    _nan_at(monkeypatch, {5})
    cfg = small_cfg(nan_policy="stop")
    with pytest.raises(TrainingStopped) as err, runlog(tmp_path, cfg) as log:
        run(model_cfg, cfg, packed, tmp_path / "ck", log)
    assert str(err.value) == (f"pretrain stopped at step 5: non-finite loss; last good checkpoint: "
                              f"{tmp_path / 'ck' / 'iter_0000003'} (step 3). Nothing was saved after it.")
    assert ckpt.latest_step(tmp_path / "ck") == 3
    assert _events(log.dir, "training_stopped")[0]["last_good_step"] == 3


def test_skip_policy_skips_the_batch_and_goes_on(model_cfg, packed, tmp_path, monkeypatch):
    _nan_at(monkeypatch, {2})
    cfg = small_cfg(nan_policy="skip")
    with runlog(tmp_path, cfg) as log:
        summary = run(model_cfg, cfg, packed, tmp_path / "ck", log)
    assert summary["steps"] == 6 and summary["skipped_batches"] == 1
    assert math.isfinite(summary["final_train_loss"])
    (skipped,) = _events(log.dir, "batch_skipped")
    assert skipped["step"] == 2 and skipped["reason"] == "non-finite loss"
    rows = {r["step"]: r for r in read_jsonl(log.dir / "metrics.jsonl")}
    assert rows[2]["skipped"] and rows[2]["grad_norm"] is None and rows[2]["lr"] == rows[1]["lr"]


def test_too_many_skips_in_a_row_stop(model_cfg, packed, tmp_path, monkeypatch):
    _nan_at(monkeypatch, {2, 3})
    cfg = small_cfg(nan_policy="skip", max_skipped=1)
    with pytest.raises(TrainingStopped, match="step 3: non-finite loss, and 2 skipped in a row"), \
            runlog(tmp_path, cfg) as log:
        run(model_cfg, cfg, packed, tmp_path / "ck", log)


# -- extending a run ----------------------------------------------------------------------------

def test_extending_train_steps_resumes_with_a_new_data_block(model_cfg, packed, tmp_path):
    short, longer = small_cfg(train_steps=4, save_interval=2), small_cfg(train_steps=6, save_interval=2)
    with runlog(tmp_path / "a", short) as log:
        first = run(model_cfg, short, packed, tmp_path / "ck", log)
    with runlog(tmp_path / "b", longer) as log:
        extended = run(model_cfg, longer, packed, tmp_path / "ck", log)
    assert extended["steps"] == 6 and extended["first_train_loss"] == first["first_train_loss"]
    (event,) = _events(log.dir, "train_steps_extended")
    assert event["from_steps"] == 4 and event["to_steps"] == 6
    assert event["new_block_samples"] == 2 * longer.global_batch
    assert event["new_block_seed"] == longer.seed + 1
    assert _events(log.dir, "resume")[0]["step"] == 4
    assert sorted(r["step"] for r in read_jsonl(log.dir / "metrics.jsonl")) == [5, 6]
    state = ckpt.common_state(ckpt.iter_dir(tmp_path / "ck", 6))
    assert state["extra"]["data_blocks"] == [4 * longer.global_batch, 2 * longer.global_batch]


def test_train_steps_below_the_latest_checkpoint_stops_and_deletes_nothing(model_cfg, packed, tmp_path):
    cfg = small_cfg(train_steps=4, save_interval=2)
    with runlog(tmp_path / "a", cfg) as log:
        run(model_cfg, cfg, packed, tmp_path / "ck", log)
    before = sorted(p.name for p in (tmp_path / "ck").iterdir())
    with pytest.raises(ConfigError, match="pretrain.train_steps 3 is below the latest checkpoint's step 4"):
        run(model_cfg, small_cfg(train_steps=3, save_interval=2), packed, tmp_path / "ck", None)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == before


def test_throughput_and_mfu_are_logged_every_interval(model_cfg, packed, tmp_path):
    cfg = small_cfg(train_steps=2, warmup_steps=1, peak_tflops=1.0)
    with runlog(tmp_path, cfg) as log:
        run(model_cfg, cfg, packed, tmp_path / "ck", log)
    rows = read_jsonl(log.dir / "metrics.jsonl")
    from pretrain.flops import flops_per_token

    for r in rows:
        assert r["tokens_per_s_per_device"] > 0
        tflops = flops_per_token(model_cfg) * r["tokens_per_s_per_device"] / 1e12
        assert r["tflops_per_device"] == pytest.approx(tflops)
        assert r["mfu"] == pytest.approx(r["tflops_per_device"] / 1.0)
    (acct,) = _events(log.dir, "throughput_accounting")
    assert acct["peak_tflops"] == 1.0 and acct["peak_source"] == "pretrain.peak_tflops"


def test_the_mfu_benchmark_runs_the_loop_pieces_on_cpu():
    """benchmarks/pretrain_mfu.py stays runnable for the next GPU session: its CPU smoke test."""
    import json
    import subprocess
    import sys

    from tests.pretrain.conftest import ROOT

    out = subprocess.run([sys.executable, "benchmarks/pretrain_mfu.py", "--device", "cpu", "--layers", "2",
                          "--hidden-size", "64", "--seq-length", "128", "--micro-batch-size", "1",
                          "--micro-batches", "2", "--steps", "2", "--warmup", "1"],
                         cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "pretrain_mfu" and result["mfu"] is None
    assert result["tokens_per_s_per_gpu"] > 0
    assert math.isfinite(result["last_loss"])


def test_a_code_change_stops_the_resume_unless_allowed(model_cfg, packed, tmp_path):
    import json

    from dasi.resume import STATE_FILE, FingerprintMismatch

    cfg = small_cfg()
    with runlog(tmp_path / "a", cfg) as log:
        run(model_cfg, cfg, packed, tmp_path / "ck", log, stop_at=3)
    state_file = tmp_path / "ck" / STATE_FILE
    state = json.loads(state_file.read_text())
    state["parts"]["code"] = "an older version of the training code"
    state_file.write_text(json.dumps(state))
    with pytest.raises(FingerprintMismatch, match="changed: code"):
        run(model_cfg, cfg, packed, tmp_path / "ck", None)
    assert ckpt.latest_step(tmp_path / "ck") == 3  # nothing deleted
    with runlog(tmp_path / "b", cfg) as log:
        summary = run(model_cfg, cfg, packed, tmp_path / "ck", log, allow_code_change=True)
    assert summary["steps"] == 6
    (event,) = _events(log.dir, "resume_across_code_change")
    assert event["before"] == "an older version of the training code"
    assert _events(log.dir, "resume")[0]["step"] == 3
