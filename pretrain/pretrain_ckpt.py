"""megatron-core distributed checkpoints: ``<dir>/iter_0000050/`` plus a ``latest`` marker.

A checkpoint folder is written under a temporary name and renamed when every rank has finished;
``latest`` is written last, so a crash never leaves a checkpoint that looks complete. Model and
optimizer are ``dist_checkpointing`` shards (loadable at another tensor-parallel size); scheduler,
step and consumed samples are common state; each rank's RNG states sit in ``rng/rank_NNNNN.pt``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

LATEST = "latest"


def iter_dir(root: Path, step: int) -> Path:
    return Path(root) / f"iter_{step:07d}"


def latest_step(root: Path) -> int | None:
    marker = Path(root) / LATEST
    if not marker.exists():
        return None
    step = int(marker.read_text().strip())
    if not iter_dir(root, step).is_dir():
        raise FileNotFoundError(f"{marker} names step {step} but {iter_dir(root, step)} is missing")
    return step


def rng_state() -> dict[str, Any]:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    state = {"torch": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    torch.set_rng_state(state["torch"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def _sharded(model: Any, optimizer: Any | None, is_loading: bool = False) -> dict[str, Any]:
    model_sd = model.sharded_state_dict()
    state: dict[str, Any] = {"model": model_sd}
    if optimizer is not None:  # when loading, the optimizer creates its (empty) states first
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=is_loading)
    return state


def save(root: Path, step: int, model: Any, optimizer: Any, scheduler: Any,
         extra: dict[str, Any]) -> Path:
    """Write checkpoint ``step`` (collective: every rank calls it)."""
    from megatron.core import dist_checkpointing

    rank = torch.distributed.get_rank()
    final = iter_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    torch.distributed.barrier()
    state = _sharded(model, optimizer)
    state.update(step=step, scheduler=scheduler.state_dict(), extra=extra)
    dist_checkpointing.save(state, str(tmp))
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(rng_state(), tmp / "rng" / f"rank_{rank:05d}.pt")
    torch.distributed.barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        marker = Path(root) / LATEST
        marker.with_name(".latest.tmp").write_text(f"{step}\n")
        os.replace(marker.with_name(".latest.tmp"), marker)
    torch.distributed.barrier()
    return final


def load(path: Path, model: Any, optimizer: Any | None = None, scheduler: Any | None = None,
         restore_rng: bool = True) -> dict[str, Any]:
    """Load a checkpoint folder into ``model`` (and optimizer, scheduler, RNG when given);
    returns the common state (``step``, ``extra``)."""
    from megatron.core import dist_checkpointing

    path = Path(path)
    loaded = dist_checkpointing.load(_sharded(model, optimizer, is_loading=True), str(path))
    model.load_state_dict(loaded["model"])
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(loaded["scheduler"])
    rng_file = path / "rng" / f"rank_{torch.distributed.get_rank():05d}.pt"
    if restore_rng and rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return {"step": int(loaded["step"]), "extra": loaded.get("extra", {})}
