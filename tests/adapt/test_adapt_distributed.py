"""An adaptation phase over two ranks (torchrun, gloo on CPU) trains as one process with the same
global batch: the same blocks in each step, the same losses and the same merged weights.

FSDP cannot run here (accelerate applies its FSDP plugin only on GPU-type devices and runs DDP over
gloo on CPU), so this is data parallel; it still goes through everything a multi-GPU phase uses:
the stage's checkpoint check before launch, the job file, :mod:`adapt.worker`, the Trainer's
batches of the block stream dealt to the ranks, ``save_model`` and rank 0's merge, and the replay
of rank 0's records into the run log. The phase is LoRA with tied, trained embeddings (peft's
``modules_to_save``): the most the ranks have to agree on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from adapt.config import AdaptConfig
from adapt.train import run
from dasi.resume import STATE_FILE
from dasi.runlog import LoggingConfig, RunLog, read_jsonl
from tests.adapt.tiny import adapt_section, curated_dir, english_llama


def _phase(cfg: AdaptConfig, base: Path, curated: Path, root: Path) -> tuple[dict, Path, Path]:
    logging = LoggingConfig(logs_dir=str(root / "logs"), wandb=False, tensorboard=False)
    with RunLog("adapt-lora", cfg.model_dump(mode="json"), logging=logging) as log:
        metrics = run(cfg, "lora", base, curated, root / "out", root / "work", root / "metrics.json", log,
                      launcher="torchrun")
    return metrics, root / "out", log.dir


def test_two_gloo_ranks_train_a_phase_as_one_process(tmp_path: Path) -> None:
    base, curated = english_llama(tmp_path / "base", tied=True), curated_dir(tmp_path / "curated")
    section = adapt_section(base, {"lora": {"steps": 3, "train_embeddings": True}})
    one = AdaptConfig.model_validate(section)
    two = AdaptConfig.model_validate({**section, "parallel": {"gpus_per_node": 2}})
    m1, out1, log1 = _phase(one, base, curated, tmp_path / "one")
    m2, out2, log2 = _phase(two, base, curated, tmp_path / "two")

    events = {e["event"]: e for e in read_jsonl(log2 / "events.jsonl")}
    assert events["launch"]["launcher"] == "torchrun" and "launch" not in {
        e["event"] for e in read_jsonl(log1 / "events.jsonl")}  # one rank: in-process
    assert (events["trainer_setup"]["world_size"], events["trainer_setup"]["engine"],
            events["trainer_setup"]["global_batch"]) == (2, "ddp", 4)
    assert sorted(p.name for p in (log2 / "launch").iterdir()) == ["job.json"]  # records replayed
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["format"] == "adapt-phase/1"
    assert [p.name for p in (tmp_path / "two" / "work").iterdir()] == [STATE_FILE]  # no scratch left

    # the same blocks, read the same way; the same trainable set
    for key in ("blocks_sha256", "read_by_end", "trainable_params", "steps", "start_block"):
        assert m2[key] == m1[key], key
    # The same blocks in each step (rank 0 reads the stream, its batches dealt in order) and the
    # same mean over them (every block has seq_length labelled tokens), so the gradients are the
    # same sums; what differs is the float32 summation order of two all-reduced halves.
    losses = [{r["step"]: r["train/loss"] for r in read_jsonl(d / "metrics.jsonl") if "train/loss" in r}
              for d in (log1, log2)]
    assert sorted(losses[0]) == sorted(losses[1]) == [1, 2, 3]
    assert [losses[1][s] for s in (1, 2, 3)] == pytest.approx([losses[0][s] for s in (1, 2, 3)], rel=1e-5)
    assert m2["train_loss"] == pytest.approx(m1["train_loss"], rel=1e-5)

    w0, w1, w2 = (load_file(str(d / "model.safetensors")) for d in (base, out1, out2))
    assert w1.keys() == w2.keys() == w0.keys()  # merged: plain HF weights, still tied (no lm_head)
    moved = max((w1[k] - w0[k]).abs().max().item() for k in w1)
    diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert moved > 1e-3 and diff < 1e-4, (moved, diff)
