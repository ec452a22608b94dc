"""GPU check of the distributed optimizer, fp32 and bf16: training uses megatron's
DistributedOptimizer, three steps on one batch lower the loss, and a checkpoint saved by
checkpoint.save and loaded by checkpoint.load gives the next step's loss bit for bit.

    PYTHONPATH=. python benchmarks/device/distributed_optimizer_check.py   # exit 0 when all hold

Prints one JSON line per dtype. Needs a GPU (on CPU the distributed optimizer is off)."""
import json
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from dasi.model_config import ModelConfig
from pretrain import checkpoint as ckpt
from pretrain.config import PretrainConfig
from pretrain.loop import _loss, _optimizer, use_distributed_optimizer
from pretrain.model import build_gpt, distributed, transformer_config


def build(m, cfg):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    gpt = build_gpt(m, cfg.bf16, use_te=False)
    model = DistributedDataParallel(transformer_config(m, cfg.bf16), DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=use_distributed_optimizer()), gpt)
    opt, sched = _optimizer(cfg, model)
    return gpt, model, opt, sched


def step(model, opt, sched, b):
    model.train()
    model.zero_grad_buffer()
    opt.zero_grad()
    loss = _loss(model, b)
    loss.backward()
    model.finish_grad_sync()
    ok, norm, _ = opt.step()
    sched.step(1)
    return loss.item(), ok, norm


def main(bf16: bool) -> bool:
    m = ModelConfig.model_validate(yaml.safe_load(open("configs/tiny.yaml"))["model"])
    cfg = PretrainConfig(train_steps=10, micro_batch_size=2, warmup_steps=1, bf16=bf16)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(6):
        t = torch.randint(0, m.vocab_size, (2, m.seq_length + 1), generator=g).to(dev)
        batches.append({"tokens": t[:, :-1], "labels": t[:, 1:],
                        "loss_mask": torch.ones(2, m.seq_length).to(dev),
                        "position_ids": torch.arange(m.seq_length).repeat(2, 1).to(dev)})
    out = {"bf16": bf16, "use_distributed_optimizer": use_distributed_optimizer()}
    root = Path(tempfile.mkdtemp())
    with distributed(1, cfg.seed):
        gpt, model, opt, sched = build(m, cfg)
        # megatron-core 0.16 wraps the per-dtype optimizers in a ChainedOptimizer
        inner = getattr(opt, "chained_optimizers", [opt])
        out["optimizer"] = type(opt).__name__
        out["inner_optimizers"] = sorted({type(o).__name__ for o in inner})
        out["param_dtype"] = str(next(gpt.parameters()).dtype)
        out["losses"] = [step(model, opt, sched, batches[0])[0] for _ in range(3)]
        ckpt.save(root, 3, gpt, opt, sched, {}, {}, mode="size")
        out["next_loss"] = step(model, opt, sched, batches[3])[0]
    with distributed(1, cfg.seed):
        gpt, model, opt, sched = build(m, cfg)
        ckpt.load(ckpt.iter_dir(root, 3), gpt, opt, sched)
        out["resumed_next_loss"] = step(model, opt, sched, batches[3])[0]
    print(json.dumps(out))
    dtype = "torch.bfloat16" if bf16 else "torch.float32"
    # The first step runs at warmup's LR of 0: the loss falls from the second on.
    ok = (out["inner_optimizers"] == ["DistributedOptimizer"] and out["param_dtype"] == dtype
          and out["losses"][2] < out["losses"][0] and out["next_loss"] == out["resumed_next_loss"])
    print(json.dumps({"ok": ok}))
    return ok


if __name__ == "__main__":
    sys.exit(0 if all([main(False), main(True)]) else 1)
