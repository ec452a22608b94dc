"""The training loop every rank runs: megatron DDP + optimizer + LR scheduler, resumable."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from dasi.model_config import ModelConfig
from dasi.provenance import sha256_file
from pretrain import checkpoint as ckpt
from pretrain.config import PretrainConfig
from pretrain.data import batch, build_cached, sample_start
from pretrain.model import build_gpt, distributed, on_gpu, te_unavailable, transformer_config


class Log(Protocol):
    def log(self, metrics: dict[str, Any], step: int | None = None) -> None: ...
    def event(self, name: str, **data: Any) -> None: ...
    def summary(self, metrics: dict[str, Any]) -> None: ...


def use_distributed_optimizer() -> bool:
    """Shard optimizer states over data-parallel ranks on GPU, in bf16 and fp32 alike (megatron's
    DistributedOptimizer keeps fp32 main params either way). Not on CPU: its grad buffers are
    allocated on CUDA and it reduce-scatters, which gloo does not implement."""
    return on_gpu()


def _optimizer(cfg: PretrainConfig, model: Any) -> tuple[Any, Any]:
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    opt = get_megatron_optimizer(OptimizerConfig(
        optimizer="adam", lr=cfg.lr, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, adam_eps=cfg.adam_eps,
        clip_grad=cfg.clip_grad, bf16=cfg.bf16,
        params_dtype=torch.bfloat16 if cfg.bf16 else torch.float32,
        use_distributed_optimizer=use_distributed_optimizer(),
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


def _layer_spec(log: Log) -> str:
    reason = te_unavailable()
    if reason:
        log.event("transformer_engine_unavailable", reason=reason, layer_spec="local")
    return "local" if reason else "transformer_engine"


def _add(total: float | None, more: float) -> float | None:
    return None if total is None else round(total + more, 3)


def train(m: ModelConfig, cfg: PretrainConfig, manifest: Path, ckpt_dir: Path, log: Log,
          stop_at: int | None = None) -> dict[str, Any]:
    """Train to ``cfg.train_steps`` (or stop after step ``stop_at``), resuming from the latest
    checkpoint in ``ckpt_dir``; returns the summary of the whole run (every launch so far).
    The caller verified the packed data and the checkpoint."""
    import megatron.core.parallel_state as mpu
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from pretrain.pack import load_manifest

    par = cfg.parallel
    ckpt_dir = Path(ckpt_dir)
    start = ckpt.latest_step(ckpt_dir) or 0
    stop = max(min(stop_at or cfg.train_steps, cfg.train_steps), start)
    with distributed(par.tensor_parallel, cfg.seed):
        if mpu.get_data_parallel_world_size() != par.data_parallel:
            raise ValueError(f"world size {torch.distributed.get_world_size()} does not give "
                             f"data_parallel {par.data_parallel} at tensor_parallel {par.tensor_parallel}")
        dp_rank = mpu.get_data_parallel_rank()
        spec = _layer_spec(log)
        gpt = build_gpt(m, cfg.bf16, use_te=spec == "transformer_engine",
                        tokenizer_vocab=load_manifest(manifest).vocab_size)
        model = DistributedDataParallel(
            transformer_config(m, cfg.bf16),
            DistributedDataParallelConfig(grad_reduce_in_fp32=True,
                                          use_distributed_optimizer=use_distributed_optimizer()),
            gpt)
        opt, sched = _optimizer(cfg, model)
        # The index cache is keyed by the manifest, which holds every file's sha256: other data
        # never reuses it (megatron's own cache key names the files, not their content).
        cache = ckpt_dir / "cache" / sha256_file(manifest)[:16]
        train_ds, valid_ds = build_cached(
            manifest, m.seq_length, cfg.train_steps * cfg.global_batch,
            cfg.eval_iters * cfg.micro_batch_size * par.data_parallel, cfg.seed, cache)
        extra, history = {}, ckpt.history(ckpt_dir, start, log)
        if start:
            state = ckpt.load(ckpt.iter_dir(ckpt_dir, start), gpt, opt, sched)
            extra = state["extra"]
            log.event("resume", step=state["step"], consumed_samples=extra["consumed_samples"],
                      checkpoint=str(ckpt.iter_dir(ckpt_dir, start)))
        tokens_per_step = cfg.global_batch * m.seq_length
        t0 = time.time()
        first, last, valid = (extra.get(k)
                              for k in ("first_train_loss", "last_train_loss", "last_valid_loss"))
        wall = history["train_wall_s"]
        segments = None if history["segments"] is None else history["segments"] + (stop > start)
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
                extra = {"consumed_samples": done * cfg.global_batch, "first_train_loss": first,
                         "last_train_loss": last, "last_valid_loss": valid, "layer_spec": spec}
                wall = _add(history["train_wall_s"], time.time() - t0)
                ckpt.save(ckpt_dir, done, gpt, opt, sched, extra,
                          {"train_wall_s": wall, "segments": segments}, mode=cfg.verify_checkpoints)
                if torch.distributed.get_rank() == 0:  # after the save's last barrier: latest names it
                    ckpt.prune(ckpt_dir, cfg.keep_last, cfg.keep_every, log)
        bar.close()
        summary = {"steps": stop, "first_train_loss": first, "final_train_loss": last,
                   "final_valid_loss": valid, "layer_spec": extra.get("layer_spec", spec),
                   "world_size": par.world_size, "tensor_parallel": par.tensor_parallel,
                   "data_parallel": par.data_parallel, "train_wall_s": wall, "segments": segments}
        log.summary(summary)
        return summary
