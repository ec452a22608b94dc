"""SFT over two ranks (torchrun, gloo on CPU) trains as one process with the same global batch.

FSDP cannot run here: accelerate takes its FSDP plugin only for GPU-type devices and on CPU runs
the ranks as DDP over gloo (accelerate 1.15, ``AcceleratorState``). So the two-rank run is
data parallel; it still goes through everything multi-GPU SFT uses: the launcher, the job file,
the worker, the Trainer's distributed sampler and loss normalisation, the all-reduced held-out
loss, saving from rank 0 and the replay of rank 0's records into the run log.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dasi.runlog import LoggingConfig, RunLog, read_jsonl
from instruct.config import SFTConfig
from instruct.sft import heldout_loss
from instruct.stage import run

BASE = dict(max_steps=4, learning_rate=3e-3, max_length=160, heldout_fraction=0.2, lr_scheduler="constant")


def _train(cfg: SFTConfig, model: Path, root: Path) -> tuple[dict, Path, Path]:
    logging = LoggingConfig(logs_dir=str(root / "logs"), wandb=False, tensorboard=False)
    with RunLog("sft", cfg.model_dump(mode="json"), logging=logging) as log:
        metrics = run(cfg, model, None, [], root / "out", root / "metrics.json", log)
    return metrics, root / "out", log.dir


def _losses(logdir: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_jsonl(logdir / "metrics.jsonl") if "train/loss" in r}


@pytest.mark.slow
def test_two_gloo_ranks_give_the_one_process_losses_and_weights(tiny_model: Path, tmp_path: Path) -> None:
    one = SFTConfig.model_validate({**BASE, "batch_size": 4})
    two = SFTConfig.model_validate({**BASE, "batch_size": 2, "parallel": {"gpus_per_node": 2},
                                    "fsdp": "full_shard auto_wrap", "fsdp_wrap_layer": "LlamaDecoderLayer"})
    m1, out1, log1 = _train(one, tiny_model, tmp_path / "one")
    m2, out2, log2 = _train(two, tiny_model, tmp_path / "two")

    # the two ranks ran under torchrun and reported through rank 0's records
    events = {e["event"]: e for e in read_jsonl(log2 / "events.jsonl")}
    assert events["launch"]["launcher"] == "torchrun"
    assert (events["trainer_setup"]["world_size"], events["trainer_setup"]["engine"],
            events["trainer_setup"]["global_batch"]) == (2, "ddp", 4)
    assert events["fsdp_not_applied"]["engine"] == "ddp"  # said, not silently dropped
    assert sorted(p.name for p in (log2 / "launch").iterdir()) == ["job.json"]  # records replayed
    assert json.loads((log2 / "summary.json").read_text())["steps"] == 4
    clock = [r["elapsed_s"] for r in read_jsonl(log2 / "metrics.jsonl") if "train/loss" in r]
    assert len(clock) == 4 and clock == sorted(clock) and clock[0] > 0  # rank 0's clock, not the replay's
    assert json.loads((tmp_path / "two" / "metrics.json").read_text()) == m2  # written once, by rank 0
    assert {p.name for p in out2.iterdir()} == {p.name for p in out1.iterdir()}

    # Same chats in every step (accelerate's seeded sampler deals each global batch to the ranks
    # in order) and the same loss normalisation (the Trainer divides by the labelled tokens of
    # the whole global batch, average_tokens_across_devices), so the gradients are the same sums.
    # What differs: float32 summation order (two partial sums all-reduced) and padding width (a
    # rank pads to its own longest chat: other matmul shapes). Measured at these settings: step
    # losses agree to <= 1.3e-7 relative, held-out losses exactly (per-chat sums are float32
    # values, added exactly in float64, so the ranks' order does not matter) and weights to 4.7e-6
    # after 4 Adam steps at lr 3e-3. The tolerances are ~100x (losses) and ~20x (weights) that;
    # the same chats in another order (seed 1) move the step losses by 1.5e-3 to 8e-3 relative.
    assert m2["steps"] == m1["steps"] == 4 and m2["train_tokens"] == m1["train_tokens"]
    assert m2["heldout_loss_before"] == pytest.approx(m1["heldout_loss_before"], rel=1e-6)
    for key in ("heldout_loss_after", "heldout_loss_after_ko", "heldout_loss_after_en", "train_loss"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-5), key
    l1, l2 = _losses(log1), _losses(log2)
    assert sorted(l1) == sorted(l2) == [1, 2, 3, 4]
    assert [l2[s] for s in sorted(l2)] == pytest.approx([l1[s] for s in sorted(l1)], rel=1e-5)
    assert m1["heldout_loss_after"] < m1["heldout_loss_before"]  # it trained: the figures move

    w1, w2 = load_file(out1 / "model.safetensors"), load_file(out2 / "model.safetensors")
    assert w1.keys() == w2.keys()
    moved = max((w1[k] - load_file(tiny_model / "model.safetensors")[k]).abs().max().item() for k in w1)
    diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert moved > 1e-3 and diff < 1e-4, (moved, diff)
    assert all(w.dtype == torch.float32 for w in w2.values())


# -- the held-out loss over ranks, uneven shards -------------------------------------------------

def _examples() -> list[dict]:
    """Five chats' tokens of different lengths, labels on their second half."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i, n in enumerate((7, 12, 5, 9, 11)):
        ids = torch.randint(0, 64, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * (n // 2) + ids[n // 2:],
                    "lang": ("ko", "en")[i % 2]})
    return out


def _collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)

    def pad(xs: list[int], fill: int) -> list[int]:
        return xs + [fill] * (width - len(xs))

    return {"input_ids": torch.tensor([pad(r["input_ids"], 0) for r in rows]),
            "attention_mask": torch.tensor([pad([1] * len(r["input_ids"]), 0) for r in rows]),
            "labels": torch.tensor([pad(r["labels"], -100) for r in rows])}


def _tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1,
                                        intermediate_size=32, max_position_embeddings=32))


def _rank_heldout(rank: int, world: int, rendezvous: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    model, forwards = _tiny_llama(), []
    model.register_forward_pre_hook(lambda m, a: forwards.append(1))
    losses = heldout_loss(model, _examples(), _collate, batch_size=1)
    Path(out, f"{rank}.json").write_text(json.dumps({"losses": losses, "forwards": len(forwards)}))
    torch.distributed.destroy_process_group()


def test_heldout_loss_over_two_ranks_with_uneven_shards(tmp_path: Path) -> None:
    """Five chats over two ranks: rank 0 scores three, rank 1 two and one padding forward (under
    FSDP a forward is a collective, so the counts must match); the all-reduced figures are the
    one-process ones, on both ranks."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_heldout, args=(2, f"file://{tmp_path / 'rdzv'}", str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert [r["forwards"] for r in ranks] == [3, 3]
    alone = heldout_loss(_tiny_llama(), _examples(), _collate, batch_size=1)
    assert set(alone) == {"all", "en", "ko"}
    for r in ranks:
        assert r["losses"] == pytest.approx(alone, rel=1e-6)
