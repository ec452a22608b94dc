"""The training loop every rank runs: megatron-core's forward-backward schedules (no pipelining,
1F1B, or interleaved 1F1B over virtual stages), megatron DDP + optimizer + LR scheduler, resumable.

Per step: the schedule runs ``accumulation_steps`` micro-batches through this rank's model chunks
(context-parallel ranks each take their two chunks of every sequence), finalises the gradients
(data-parallel reduce, tied-embedding and sequence-parallel norm grads), then the loss is checked
(:class:`LossMonitor`) before the optimizer steps. Throughput and MFU are logged at every log
interval (FLOPs: :mod:`pretrain.flops`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from dasi.config import ConfigError
from dasi.model_config import ModelConfig
from dasi.provenance import sha256_file
from dasi.stage import JobFailed
from pretrain import checkpoint as ckpt
from pretrain.config import PretrainConfig
from pretrain.data import batch, block_sizes, build_blocks, sample_start
from pretrain.flops import flops_per_token, peak_tflops
from pretrain.model import build_chunks, distributed, on_gpu, te_unavailable


class Log(Protocol):
    def log(self, metrics: dict[str, Any], step: int | None = None) -> None: ...
    def event(self, name: str, **data: Any) -> None: ...
    def summary(self, metrics: dict[str, Any]) -> None: ...


class TrainingStopped(JobFailed):
    """The loss policy stopped the run (non-finite loss or gradient norm, a spike, too many skips)."""


def use_distributed_optimizer() -> bool:
    """Shard optimizer states over data-parallel ranks on GPU, in bf16 and fp32 alike (megatron's
    DistributedOptimizer keeps fp32 main params either way). Not on CPU: its grad buffers are
    allocated on CUDA and it reduce-scatters, which gloo does not implement."""
    return on_gpu()


def _optimizer(cfg: PretrainConfig, model: Any) -> tuple[Any, Any]:
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    chunks = model if isinstance(model, list) else [model]
    opt = get_megatron_optimizer(OptimizerConfig(
        optimizer="adam", lr=cfg.lr, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, adam_eps=cfg.adam_eps,
        clip_grad=cfg.clip_grad, bf16=cfg.bf16,
        params_dtype=torch.bfloat16 if cfg.bf16 else torch.float32,
        use_distributed_optimizer=use_distributed_optimizer(),
    ), chunks)
    wsd = cfg.lr_schedule == "wsd"
    # override: on resume the schedule follows this config, not the checkpoint's copy of it. The
    # fingerprint holds every other schedule setting; train_steps may grow (extending a run).
    sched = OptimizerParamScheduler(
        opt, init_lr=0.0, max_lr=cfg.lr, min_lr=cfg.min_lr, lr_warmup_steps=cfg.warmup_steps,
        lr_decay_steps=cfg.train_steps, lr_decay_style="WSD" if wsd else "cosine",
        start_wd=cfg.weight_decay, end_wd=cfg.weight_decay, wd_incr_steps=cfg.train_steps,
        wd_incr_style="constant", wsd_decay_steps=cfg.wsd_decay_steps if wsd else None,
        lr_wsd_decay_style="linear" if wsd else None,
        use_checkpoint_opt_param_scheduler=False, override_opt_param_scheduler=True)
    return opt, sched


def _dp_mean(value: torch.Tensor) -> float:
    import megatron.core.parallel_state as mpu

    value = value.detach().float().reshape(1).clone()
    torch.distributed.all_reduce(value, group=mpu.get_data_parallel_group())
    return value.item() / mpu.get_data_parallel_world_size()


def _from_last_stage(value: torch.Tensor | None) -> torch.Tensor:
    """The last pipeline stage's value, on every stage of the pipeline."""
    import megatron.core.parallel_state as mpu

    out = torch.zeros(1, dtype=torch.float64, device="cuda" if on_gpu() else "cpu")
    if mpu.is_pipeline_last_stage(ignore_virtual=True):
        out += value.detach().double().reshape(1)
    torch.distributed.all_reduce(out, group=mpu.get_pipeline_model_parallel_group())
    return out


def _loss(model: Any, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean per-token loss of one micro-batch, without pipelining or context parallelism (the
    benchmarks' single-stage step)."""
    per_token = model(b["tokens"], b["position_ids"], b.get("attention_mask"), labels=b["labels"])
    mask = b["loss_mask"].float()
    return (per_token.float() * mask).sum() / mask.sum()


def _micro_loss(loss_mask: torch.Tensor, per_token: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """The schedule's loss function on the last stage: the micro-batch's mean token loss. Under
    context parallelism each rank holds part of the tokens: it returns its sum over the whole
    micro-batch's token count (the schedule multiplies by CP, DDP averages over CP), and reports
    the whole micro-batch's mean."""
    import megatron.core.parallel_state as mpu

    mask = loss_mask.float()
    local, count = (per_token.float() * mask).sum(), mask.sum()
    mean = local.detach().clone()
    if mpu.get_context_parallel_world_size() > 1:
        group = mpu.get_context_parallel_group()
        torch.distributed.all_reduce(count, group=group)
        torch.distributed.all_reduce(mean, group=group)
    return local / count, {"loss": mean / count}


def _forward_step(data_iterator: Iterator[dict[str, torch.Tensor]], model: Any):
    from megatron.core.utils import get_batch_on_this_cp_rank

    b = get_batch_on_this_cp_rank(dict(next(data_iterator)))
    out = model(b["tokens"], b["position_ids"], b.get("attention_mask"), labels=b["labels"])
    return out, partial(_micro_loss, b["loss_mask"])


def _wire(model: list[Any], cfg: PretrainConfig) -> None:
    """The schedule's hooks into megatron DDP, as Megatron-LM sets them: no grad sync until the
    last micro-batch, bucket-wise overlap when configured, and the final grad reduction."""
    from megatron.core.distributed import finalize_model_grads

    config = model[0].config
    one = len(model) == 1
    config.no_sync_func = model[0].no_sync if one else [m.no_sync for m in model]
    if cfg.overlap_grad_reduce:
        config.grad_sync_func = model[0].start_grad_sync if one else [m.start_grad_sync for m in model]
    if cfg.overlap_param_gather:
        config.param_sync_func = model[0].start_param_sync if one else [m.start_param_sync for m in model]
    config.finalize_model_grads_func = finalize_model_grads


def _run_schedule(model: list[Any], make_batches: Callable[[], Iterator[dict[str, torch.Tensor]]],
                  micro_batches: int, m: ModelConfig, cfg: PretrainConfig, forward_only: bool) -> float:
    """Forward(-backward) of ``micro_batches`` micro-batches; returns their mean loss (every rank)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    iterators = [make_batches() for _ in model]
    out = get_forward_backward_func()(
        forward_step_func=_forward_step, data_iterator=iterators if len(model) > 1 else iterators[0],
        model=model if len(model) > 1 else model[0], num_microbatches=micro_batches,
        seq_length=m.seq_length, micro_batch_size=cfg.micro_batch_size, forward_only=forward_only)
    mean = torch.stack([d["loss"] for d in out]).mean() if out else None
    return _dp_mean(_from_last_stage(mean))


def evaluate(model: list[Any], valid: Any, m: ModelConfig, cfg: PretrainConfig, dp_rank: int) -> float:
    mb, dp = cfg.micro_batch_size, cfg.parallel.data_parallel

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        return (batch(valid, (i * dp + dp_rank) * mb, mb) for i in range(cfg.eval_iters))

    for chunk in model:
        chunk.eval()
    with torch.no_grad():
        loss = _run_schedule(model, batches, cfg.eval_iters, m, cfg, forward_only=True)
    for chunk in model:
        chunk.train()
    return loss


class LossMonitor:
    """The loss policy: a non-finite loss, or one above ``spike_factor`` x the mean of the last
    ``spike_window`` accepted losses, is skipped or stops the run (``nan_policy``). Its state is
    saved with each checkpoint, so a resumed run judges exactly as an uninterrupted one."""

    def __init__(self, cfg: PretrainConfig, state: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        state = state or {}
        self.window: list[float] = list(state.get("loss_window", []))
        self.skipped_in_row: int = state.get("skipped_in_row", 0)
        self.skipped: int = state.get("skipped_batches", 0)

    def verdict(self, loss: float) -> str | None:
        """None when ``loss`` is fine, else why it is not."""
        if not math.isfinite(loss):
            return "non-finite loss"
        factor, full = self.cfg.spike_factor, len(self.window) >= self.cfg.spike_window
        if factor and full and loss > factor * (sum(self.window) / len(self.window)):
            return f"loss spike ({loss:.4g} > {factor} x mean {sum(self.window) / len(self.window):.4g} " \
                   f"of the last {len(self.window)})"
        return None

    def accept(self, loss: float) -> None:
        self.window = (self.window + [loss])[-self.cfg.spike_window:]
        self.skipped_in_row = 0

    def skip(self) -> bool:
        """Count a skipped batch; False when that is more skips in a row than allowed."""
        self.skipped += 1
        self.skipped_in_row += 1
        return self.skipped_in_row <= self.cfg.max_skipped

    def state(self) -> dict[str, Any]:
        return {"loss_window": self.window, "skipped_in_row": self.skipped_in_row,
                "skipped_batches": self.skipped}


def _stopped(step: int, why: str, ckpt_dir: Path, log: Log) -> TrainingStopped:
    good = ckpt.latest_step(ckpt_dir)
    where = f"last good checkpoint: {ckpt.iter_dir(ckpt_dir, good)} (step {good})" if good else \
        "no checkpoint was saved yet"
    log.event("training_stopped", step=step, reason=why, last_good_step=good)
    return TrainingStopped(f"pretrain stopped at step {step}: {why}; {where}. Nothing was saved after it.")


def _layer_spec(log: Log) -> str:
    reason = te_unavailable()
    if reason:
        log.event("transformer_engine_unavailable", reason=reason, layer_spec="local")
    return "local" if reason else "transformer_engine"


def _peak(cfg: PretrainConfig, log: Log, m: ModelConfig) -> float | None:
    """Dense peak TFLOP/s of one device for MFU: configured, else by the CUDA device's name."""
    name = torch.cuda.get_device_name() if on_gpu() else "cpu"
    peak = cfg.peak_tflops or (peak_tflops(name) if on_gpu() else None)
    source = "pretrain.peak_tflops" if cfg.peak_tflops else ("device table" if peak else None)
    log.event("throughput_accounting", flops_per_token=flops_per_token(m), formula="pretrain/flops.py",
              device=name, peak_tflops=peak, peak_source=source,
              **({} if peak else {"mfu": "not logged: no known peak (set pretrain.peak_tflops)"}))
    return peak


def _check_layout(cfg: PretrainConfig) -> None:
    import megatron.core.parallel_state as mpu

    if cfg.overlap_param_gather and not use_distributed_optimizer():
        raise ConfigError("pretrain.overlap_param_gather: needs megatron's distributed optimizer, which "
                          "runs on GPU only; set it false here")
    if mpu.get_data_parallel_world_size() != cfg.parallel.data_parallel:
        raise ValueError(f"world size {torch.distributed.get_world_size()} does not give data_parallel "
                         f"{cfg.parallel.data_parallel} at tensor x pipeline x context parallel "
                         f"{cfg.parallel.model_parallel}")


def _add(total: float | None, more: float) -> float | None:
    return None if total is None else round(total + more, 3)


def train(m: ModelConfig, cfg: PretrainConfig, manifest: Path, ckpt_dir: Path, log: Log,
          stop_at: int | None = None, save_requested: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train to ``cfg.train_steps`` (or stop after step ``stop_at``), resuming from the latest
    checkpoint in ``ckpt_dir``; returns the summary of the whole run (every launch so far).
    ``save_requested`` (collective) is asked after every step: when true, the step is saved and
    training ends there. The caller verified the packed data and the checkpoint."""
    import megatron.core.parallel_state as mpu
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from pretrain.pack import load_manifest

    par = cfg.parallel
    ckpt_dir = Path(ckpt_dir)
    start = ckpt.latest_step(ckpt_dir) or 0
    stop = max(min(stop_at or cfg.train_steps, cfg.train_steps), start)
    with distributed(par.tensor_parallel, cfg.seed, par.pipeline_parallel, par.virtual_pipeline_parallel,
                     par.context_parallel):
        _check_layout(cfg)
        dp_rank = mpu.get_data_parallel_rank()
        spec = _layer_spec(log)
        if cfg.document_masking and spec == "transformer_engine":
            # TE's causal attention does not apply an explicit mask; TE needs packed (THD) sequences
            # for this, which are not built yet. Refuse rather than train without the masking.
            raise ConfigError("pretrain.document_masking: not supported with Transformer Engine layers yet "
                              "(TE's causal attention ignores an explicit mask); the local layers run it")
        if cfg.compile and spec == "transformer_engine":
            log.event("compile_skipped", reason="Transformer Engine layers run their own fused kernels; "
                      "pretrain.compile applies to the local layers")
        chunks = build_chunks(m, cfg.bf16, use_te=spec == "transformer_engine",
                              tokenizer_vocab=load_manifest(manifest).vocab_size, train=cfg)
        ddp = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, use_distributed_optimizer=use_distributed_optimizer(),
            overlap_grad_reduce=cfg.overlap_grad_reduce, overlap_param_gather=cfg.overlap_param_gather)
        model = [DistributedDataParallel(c.config, ddp, c, disable_bucketing=i > 0)
                 for i, c in enumerate(chunks)]
        _wire(model, cfg)
        opt, sched = _optimizer(cfg, model)
        saved = ckpt.common_state(ckpt.iter_dir(ckpt_dir, start))["extra"] if start else {}
        sizes = block_sizes(saved.get("data_blocks"), cfg.train_steps * cfg.global_batch)
        # The index cache is keyed by the manifest, which holds every file's sha256: other data
        # never reuses it (megatron's own cache key names the files, not their content).
        cache = ckpt_dir / "cache" / sha256_file(manifest)[:16]
        train_ds, valid_ds = build_blocks(manifest, m.seq_length, sizes,
                                          cfg.eval_iters * cfg.micro_batch_size * par.data_parallel,
                                          cfg.seed, cache, cfg.document_masking)
        extra, history = {}, ckpt.history(ckpt_dir, start, log)
        if not start and cfg.init_from:
            source = ckpt.weights_folder(Path(cfg.init_from))
            ckpt.load(source, chunks, restore_rng=False)
            log.event("init_from", checkpoint=str(source))
        if start:
            state = ckpt.load(ckpt.iter_dir(ckpt_dir, start), chunks, opt, sched)
            extra = state["extra"]
            log.event("resume", step=state["step"], consumed_samples=extra["consumed_samples"],
                      checkpoint=str(ckpt.iter_dir(ckpt_dir, start)))
            if len(sizes) > len(extra.get("data_blocks", [sizes[0]])):
                log.event("train_steps_extended", from_steps=extra.get("train_steps"),
                          to_steps=cfg.train_steps, new_block_samples=sizes[-1],
                          new_block_seed=cfg.seed + len(sizes) - 1)
        monitor = LossMonitor(cfg, extra.get("loss_monitor"))
        peak = _peak(cfg, log, m)
        tokens_per_step = cfg.global_batch * m.seq_length
        flops = flops_per_token(m)
        t0 = time.time()
        first, last, valid = (extra.get(k)
                              for k in ("first_train_loss", "last_train_loss", "last_valid_loss"))
        wall = history["train_wall_s"]
        segments = None if history["segments"] is None else history["segments"] + (stop > start)
        bar = tqdm(total=stop, initial=start, desc="pretrain", unit="step",
                   disable=torch.distributed.get_rank() != 0)
        saver = ckpt.Saver(cfg.async_save)
        for step in range(start, stop):
            saver.poll()
            t = time.time()
            for chunk in model:
                chunk.zero_grad_buffer()
            opt.zero_grad()

            def micro_batches(step: int = step) -> Iterator[dict[str, torch.Tensor]]:
                return (batch(train_ds, sample_start(step, i, dp_rank, cfg.global_batch, cfg.micro_batch_size,
                                                     par.data_parallel), cfg.micro_batch_size)
                        for i in range(cfg.accumulation_steps))

            loss = _run_schedule(model, micro_batches, cfg.accumulation_steps, m, cfg, forward_only=False)
            done = step + 1
            why = monitor.verdict(loss)
            if why and (cfg.nan_policy == "stop" or not monitor.skip()):
                raise _stopped(done, why if cfg.nan_policy == "stop" else
                               f"{why}, and {monitor.skipped_in_row} skipped in a row (max_skipped "
                               f"{cfg.max_skipped})", ckpt_dir, log)
            if why:
                log.event("batch_skipped", step=done, reason=why, loss=loss,
                          skipped_in_row=monitor.skipped_in_row)
                grad_norm = None
            else:
                _, grad_norm, _ = opt.step()
                sched.step(1)
                if grad_norm is not None and not math.isfinite(grad_norm):
                    raise _stopped(done, f"non-finite gradient norm {grad_norm} (the parameters were "
                                   "updated with it)", ckpt_dir, log)
                monitor.accept(loss)
                last = loss
                first = loss if first is None else first
            dt = time.time() - t
            per_device = tokens_per_step / dt / par.world_size
            metrics = {"loss": loss, "lr": opt.param_groups[0]["lr"], "grad_norm": grad_norm,
                       "skipped": why is not None, "consumed_samples": done * cfg.global_batch,
                       "tokens_per_s": tokens_per_step / dt, "tokens_per_s_per_device": per_device,
                       "tflops_per_device": flops * per_device / 1e12, "elapsed_s": time.time() - t0}
            if peak:
                metrics["mfu"] = flops * per_device / 1e12 / peak
            if done % cfg.eval_interval == 0 or done == stop:
                valid = metrics["valid_loss"] = evaluate(model, valid_ds, m, cfg, dp_rank)
            if done % cfg.log_interval == 0 or done == stop or "valid_loss" in metrics:
                log.log(metrics, step=done)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update(1)
            signalled = save_requested is not None and save_requested()
            if done % cfg.save_interval == 0 or done == stop or signalled:
                extra = {"consumed_samples": done * cfg.global_batch, "first_train_loss": first,
                         "last_train_loss": last, "last_valid_loss": valid, "layer_spec": spec,
                         "train_steps": cfg.train_steps, "data_blocks": sizes,
                         "loss_monitor": monitor.state()}
                wall = _add(history["train_wall_s"], time.time() - t0)
                saver.save(ckpt_dir, done, chunks, opt, sched, extra,
                           {"train_wall_s": wall, "segments": segments}, mode=cfg.verify_checkpoints,
                           then=partial(ckpt.prune, ckpt_dir, cfg.keep_last, cfg.keep_every, log))
            if signalled:
                log.event("signal_save", step=done, checkpoint=str(ckpt.iter_dir(ckpt_dir, done)))
                stop = done
                break
        saver.close()
        bar.close()
        summary = {"steps": stop, "first_train_loss": first, "final_train_loss": last,
                   "final_valid_loss": valid, "layer_spec": extra.get("layer_spec", spec),
                   "world_size": par.world_size, "tensor_parallel": par.tensor_parallel,
                   "pipeline_parallel": par.pipeline_parallel,
                   "virtual_pipeline_parallel": par.virtual_pipeline_parallel,
                   "context_parallel": par.context_parallel, "sequence_parallel": par.sequence_parallel,
                   "data_parallel": par.data_parallel, "skipped_batches": monitor.skipped,
                   "train_wall_s": wall, "segments": segments}
        log.summary(summary)
        return summary
