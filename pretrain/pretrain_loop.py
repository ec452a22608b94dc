"""The training loop every rank runs: megatron DDP + optimizer + LR scheduler, resumable."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from dasi.model_config import ModelConfig
from pretrain import pretrain_ckpt as ckpt
from pretrain.model import build_gpt, distributed, transformer_config
from pretrain.pretrain_config import PretrainConfig
from pretrain.pretrain_data import batch, build_datasets, sample_start


class Log(Protocol):
    def log(self, metrics: dict[str, Any], step: int | None = None) -> None: ...
    def event(self, name: str, **data: Any) -> None: ...
    def summary(self, metrics: dict[str, Any]) -> None: ...


def _optimizer(cfg: PretrainConfig, model: Any) -> tuple[Any, Any]:
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    opt = get_megatron_optimizer(OptimizerConfig(
        optimizer="adam", lr=cfg.lr, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, adam_eps=cfg.adam_eps,
        clip_grad=cfg.clip_grad, bf16=cfg.bf16,
        params_dtype=torch.bfloat16 if cfg.bf16 else torch.float32,
        use_distributed_optimizer=cfg.bf16 and torch.cuda.is_available(),
    ), [model])
    wsd = cfg.lr_schedule == "wsd"
    sched = OptimizerParamScheduler(
        opt, init_lr=0.0, max_lr=cfg.lr, min_lr=cfg.min_lr, lr_warmup_steps=cfg.warmup_steps,
        lr_decay_steps=cfg.train_steps, lr_decay_style="WSD" if wsd else "cosine",
        start_wd=cfg.weight_decay, end_wd=cfg.weight_decay, wd_incr_steps=cfg.train_steps,
        wd_incr_style="constant", wsd_decay_steps=cfg.wsd_decay_steps if wsd else None,
        lr_wsd_decay_style="linear" if wsd else None)
    return opt, sched


def _dp_mean(value: torch.Tensor) -> float:
    import megatron.core.parallel_state as mpu

    value = value.detach().float().reshape(1).clone()
    torch.distributed.all_reduce(value, group=mpu.get_data_parallel_group())
    return value.item() / mpu.get_data_parallel_world_size()


def _loss(model: Any, b: dict[str, torch.Tensor]) -> torch.Tensor:
    per_token = model(b["tokens"], b["position_ids"], None, labels=b["labels"])
    mask = b["loss_mask"].float()
    return (per_token.float() * mask).sum() / mask.sum()


@torch.no_grad()
def evaluate(model: Any, valid: Any, cfg: PretrainConfig, dp_rank: int) -> float:
    mb, dp = cfg.micro_batch_size, cfg.parallel.data_parallel
    losses = [_loss(model, batch(valid, (i * dp + dp_rank) * mb, mb)) for i in range(cfg.eval_iters)]
    return _dp_mean(torch.stack(losses).mean())


def train(m: ModelConfig, cfg: PretrainConfig, manifest: Path, ckpt_dir: Path, log: Log,
          stop_at: int | None = None) -> dict[str, Any]:
    """Train to ``cfg.train_steps`` (or stop after step ``stop_at``), resuming from the latest
    checkpoint in ``ckpt_dir``; returns the summary."""
    import megatron.core.parallel_state as mpu
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from pretrain.pack import load_manifest

    par = cfg.parallel
    stop = min(stop_at or cfg.train_steps, cfg.train_steps)
    with distributed(par.tensor_parallel, cfg.seed):
        if mpu.get_data_parallel_world_size() != par.data_parallel:
            raise ValueError(f"world size {torch.distributed.get_world_size()} does not give "
                             f"data_parallel {par.data_parallel} at tensor_parallel {par.tensor_parallel}")
        dp_rank = mpu.get_data_parallel_rank()
        gpt = build_gpt(m, cfg.bf16, tokenizer_vocab=load_manifest(manifest).vocab_size)
        model = DistributedDataParallel(
            transformer_config(m, cfg.bf16),
            DistributedDataParallelConfig(grad_reduce_in_fp32=True,
                                          use_distributed_optimizer=cfg.bf16 and torch.cuda.is_available()),
            gpt)
        opt, sched = _optimizer(cfg, model)
        train_ds, valid_ds = build_datasets(
            manifest, m.seq_length, cfg.train_steps * cfg.global_batch,
            cfg.eval_iters * cfg.micro_batch_size * par.data_parallel, cfg.seed, Path(ckpt_dir) / "cache")
        start = ckpt.latest_step(ckpt_dir) or 0
        if start:
            state = ckpt.load(ckpt.iter_dir(ckpt_dir, start), gpt, opt, sched)
            log.event("resume", step=state["step"], consumed_samples=state["extra"]["consumed_samples"],
                      checkpoint=str(ckpt.iter_dir(ckpt_dir, start)))
        tokens_per_step = cfg.global_batch * m.seq_length
        t0 = time.time()
        first = last = valid = None
        bar = tqdm(total=stop, initial=start, desc="pretrain", unit="step",
                   disable=torch.distributed.get_rank() != 0)
        for step in range(start, stop):
            t = time.time()
            model.train()
            model.zero_grad_buffer()
            opt.zero_grad()
            losses = []
            for micro in range(cfg.accumulation_steps):
                i = sample_start(step, micro, dp_rank, cfg.global_batch, cfg.micro_batch_size,
                                 par.data_parallel)
                loss = _loss(model, batch(train_ds, i, cfg.micro_batch_size))
                (loss / cfg.accumulation_steps).backward()
                losses.append(loss.detach())
            model.finish_grad_sync()
            ok, grad_norm, _ = opt.step()
            sched.step(1)
            last = _dp_mean(torch.stack(losses).mean())
            first = last if first is None else first
            done = step + 1
            metrics = {"loss": last, "lr": opt.param_groups[0]["lr"], "grad_norm": grad_norm,
                       "skipped": not ok, "consumed_samples": done * cfg.global_batch,
                       "tokens_per_s": tokens_per_step / (time.time() - t),
                       "elapsed_s": time.time() - t0}
            if done % cfg.eval_interval == 0 or done == stop:
                valid = metrics["valid_loss"] = evaluate(model, valid_ds, cfg, dp_rank)
            if done % cfg.log_interval == 0 or done == stop or "valid_loss" in metrics:
                log.log(metrics, step=done)
            bar.set_postfix(loss=f"{last:.3f}", refresh=False)
            bar.update(1)
            if done % cfg.save_interval == 0 or done == stop:
                ckpt.save(ckpt_dir, done, gpt, opt, sched, {"consumed_samples": done * cfg.global_batch})
        bar.close()
        summary = {"steps": stop, "resumed_from": start, "first_train_loss": first,
                   "final_train_loss": last, "final_valid_loss": valid,
                   "train_wall_s": round(time.time() - t0, 3), "world_size": par.world_size,
                   "tensor_parallel": par.tensor_parallel, "data_parallel": par.data_parallel}
        log.summary(summary)
        return summary
