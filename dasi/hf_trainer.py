"""What dasi adds to a Hugging Face ``Trainer``: its logged values mirrored into the run log."""

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
