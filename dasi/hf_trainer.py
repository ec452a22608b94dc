"""What dasi adds to a Hugging Face ``Trainer``: its logged values mirrored into the run log,
and the engine it ran as, logged (a stage's FSDP words are read by :mod:`dasi.fsdp`)."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback


class MirrorToRunLog(TrainerCallback):
    """Every value the Trainer logs (loss, learning rate, grad norm...) as ``train/<name>`` in the
    run's metrics, at the Trainer's global step, from the main process only."""

    def __init__(self, log: Any) -> None:
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:  # noqa: ANN001
        if logs and state.is_world_process_zero:
            self.log.log({f"train/{k}": v for k, v in logs.items()}, step=state.global_step)


def log_trainer_setup(trainer: Any, fsdp: str, log: Any) -> None:
    """How the Trainer runs: ranks, engine, device; and, when FSDP was asked for but the
    accelerator does not shard (accelerate applies FSDP only on GPU-type devices; on CPU it runs
    DDP over gloo), that it trained data parallel instead."""
    args = trainer.args
    engine = "fsdp" if trainer.is_fsdp_enabled else ("ddp" if args.world_size > 1 else "single")
    log.event("trainer_setup", world_size=args.world_size, engine=engine, device=str(args.device),
              distributed_type=trainer.accelerator.distributed_type.value,
              global_batch=args.per_device_train_batch_size * args.gradient_accumulation_steps
              * args.world_size)
    if fsdp and not trainer.is_fsdp_enabled:
        log.event("fsdp_not_applied", fsdp=fsdp, engine=engine,
                  reason=f"accelerate runs {trainer.accelerator.distributed_type.value} on {args.device}: "
                         "its FSDP plugin is taken only on GPU-type devices")
