"""megatron-core distributed checkpoints: ``<dir>/iter_0000050/`` plus a ``latest`` marker.

A checkpoint folder is written under a temporary name, given a ``checksums.json`` (size and, in
``sha256`` mode, hash of every file in it) and renamed when every rank has finished; ``latest``
is written last, so a crash never leaves a checkpoint that looks complete, and :func:`verify`
finds any later damage. Model and optimizer are ``dist_checkpointing`` shards (loadable at another
tensor-parallel size); scheduler, step, consumed samples and the run's first/last losses are
common state; each rank's RNG states sit in ``rng/rank_NNNNN.pt``.

The folder holds only what training computed, so an interrupted-and-resumed run writes the same
bytes as an uninterrupted one. Wall time and the number of launches differ between those two and
live outside it, in ``<dir>/history/iter_0000050.json``.

Retention (``pretrain.keep_last`` / ``keep_every``; default: keep all): after each save, rank 0
deletes the checkpoints that are neither among the last N nor at a multiple of K, never the one
``latest`` names.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from dasi.atomic import write_json
from dasi.integrity import FileRecord, IntegrityError, VerifyMode, check, record

LATEST = "latest"
CHECKSUMS = "checksums.json"
CHECKSUMS_FORMAT = "checkpoint-checksums/1"
HISTORY = "history"
RESTART = "To start over: dasi pretrain --restart or DASI_RESTART=1 dvc repro pretrain (deletes them)"


def iter_dir(root: Path, step: int) -> Path:
    return Path(root) / f"iter_{step:07d}"


def history_file(root: Path, step: int) -> Path:
    return Path(root) / HISTORY / f"{iter_dir(root, step).name}.json"


def latest_step(root: Path) -> int | None:
    marker = Path(root) / LATEST
    if not marker.exists():
        return None
    step = int(marker.read_text().strip())
    if not iter_dir(root, step).is_dir():
        raise IntegrityError(f"{iter_dir(root, step)}: missing (named by {marker}); nothing was changed. "
                             f"{RESTART}")
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


def rng_file(path: Path, rank: int) -> Path:
    return Path(path) / "rng" / f"rank_{rank:05d}.pt"


def _optimizer_metadata(optimizer: Any) -> dict[str, Any] | None:
    """megatron's DistributedOptimizer (GPU) saves in ``dp_reshardable`` layout, Megatron-LM's
    default: each rank writes its own shard, no gather. Its default, the deprecated
    ``fully_sharded_model_space``, fails in megatron-core 0.16 ("ShardedTensor.flattened_range is
    not supported"; seen on an H100). Other optimizers (CPU) get no metadata, as before."""
    if _distributed_parts(optimizer):
        return {"distrib_optim_sharding_type": "dp_reshardable"}
    return None


def _distributed_parts(optimizer: Any) -> list[Any]:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    parts = getattr(optimizer, "chained_optimizers", [optimizer])
    return [o for o in parts if isinstance(o, DistributedOptimizer)]


def _chunks(model: Any) -> list[Any]:
    return list(model) if isinstance(model, (list, tuple)) else [model]


def model_keys(n: int) -> list[str]:
    """Top-level keys of a checkpoint's model chunks: ``model``, or ``model0``.. with interleaved
    pipelining (tensors are matched by their global sharded keys, so any layout loads any other)."""
    return ["model"] if n == 1 else [f"model{i}" for i in range(n)]


def _sharded(model: Any, optimizer: Any | None, is_loading: bool = False) -> dict[str, Any]:
    chunks = _chunks(model)
    state: dict[str, Any] = {k: c.sharded_state_dict() for k, c in zip(model_keys(len(chunks)), chunks,
                                                                      strict=True)}
    if optimizer is not None:  # when loading, the optimizer creates its (empty) states first
        state["optimizer"] = optimizer.sharded_state_dict(dict(state), is_loading=is_loading,
                                                          metadata=_optimizer_metadata(optimizer))
    return state


def canonical(obj: Any) -> Any:
    """``obj`` with fresh dicts, lists and tuples and interned strings.

    pickle writes an object seen twice as a back-reference: a state whose strings came from a
    loaded checkpoint would pickle to other bytes than the same state built in-process."""
    if type(obj) is dict:
        return {canonical(k): canonical(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(canonical(v) for v in obj)
    if type(obj) is str:
        return sys.intern(obj)
    return obj


def _normalise_dcp_metadata(folder: Path) -> None:
    """Make torch.distributed.checkpoint's ``.metadata`` depend only on what was saved: it is
    stamped with the temp path and a random save id (the reader does not need them: it fills in
    an empty StorageMeta), and lists where each tensor went in the order the writer threads
    finished."""
    meta_file = folder / ".metadata"
    meta = pickle.loads(meta_file.read_bytes())
    meta.storage_meta = None
    meta.storage_data = dict(sorted(meta.storage_data.items(), key=lambda kv: _index_key(kv[0])))
    meta_file.write_bytes(pickle.dumps(meta))


def _index_key(index: Any) -> tuple:
    return index.fqn, tuple(index.offset or ()), -1 if index.index is None else index.index


def write_checksums(folder: Path, mode: VerifyMode) -> dict[str, Any]:
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name != CHECKSUMS)
    sums = {"format": CHECKSUMS_FORMAT, "mode": mode,
            "files": {p.relative_to(folder).as_posix(): record(p, mode).model_dump() for p in files}}
    write_json(Path(folder) / CHECKSUMS, sums)
    return sums


def read_checksums(folder: Path) -> dict[str, Any]:
    path = Path(folder) / CHECKSUMS
    if not path.is_file():
        raise IntegrityError(f"{path}: missing (every checkpoint is written with it); nothing was changed. "
                             f"{RESTART}")
    sums = json.loads(path.read_text())
    if sums.get("format") != CHECKSUMS_FORMAT:
        raise IntegrityError(f"{path}: format {sums.get('format')!r}, expected {CHECKSUMS_FORMAT!r}; "
                             f"nothing was changed. {RESTART}")
    return sums


def verify(folder: Path) -> dict[str, Any]:
    """Check every file of checkpoint ``folder`` against its ``checksums.json`` (in the mode it was
    written with); files it does not list are an error too. Returns the checksums."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IntegrityError(f"{folder}: missing; nothing was changed")
    sums = read_checksums(folder)
    listed = {folder / name: FileRecord.model_validate(r) for name, r in sums["files"].items()}
    present = {p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS}
    extra = sorted(present - set(listed))
    if extra:
        raise IntegrityError(f"{extra[0]}: not listed in {folder / CHECKSUMS}; nothing was changed. "
                             f"{RESTART}")
    check(listed.items(), sums["mode"], folder / CHECKSUMS, RESTART)
    return sums


def check_rng_files(folder: Path, world_size: int) -> None:
    """A resume restores every rank's RNG state: each rank's file must be there."""
    for rank in range(world_size):
        if not rng_file(folder, rank).is_file():
            saved = len(list((Path(folder) / "rng").glob("rank_*.pt")))
            raise IntegrityError(f"{rng_file(folder, rank)}: missing: the checkpoint holds the RNG states of "
                                 f"{saved} ranks, this run has {world_size}; nothing was changed. Resume "
                                 f"with the parallel layout that saved it, or start over: {RESTART}")


def _publish(tmp: Path, final: Path, mode: VerifyMode) -> str | None:
    """Rank 0: checksum ``tmp`` and rename it to ``final``; returns an error instead of replacing
    a different ``final``."""
    _normalise_dcp_metadata(tmp)
    sums = write_checksums(tmp, mode)
    if not final.exists():
        os.replace(tmp, final)
        return None
    # ``final`` exists only when a launch died between this rename and writing ``latest``: the
    # same step of the same run, which training recomputes bit for bit on CPU.
    if final.is_dir() and (final / CHECKSUMS).is_file() and read_checksums(final)["files"] == sums["files"]:
        shutil.rmtree(tmp)  # our own temp copy of what ``final`` already holds
        return None
    return (f"{final}: exists with other content than the checkpoint just computed for that step "
            f"(not named by {final.parent / LATEST}); nothing was deleted. Move it away, or start over. "
            f"{RESTART}")


def save(root: Path, step: int, model: Any, optimizer: Any | None, scheduler: Any | None,
         extra: dict[str, Any], history: dict[str, Any] | None, mode: VerifyMode = "sha256",
         background: bool = False, then: Callable[[], None] | None = None) -> Any:
    """Write checkpoint ``step`` (collective: every rank calls it); ``history`` (wall time,
    launches) goes beside it. Without optimizer and scheduler it holds the weights only (an
    initial model for ``pretrain.init_from``). ``then`` runs once it is published.

    ``background``: returns megatron's AsyncRequest at once, after the tensors are staged; the
    shards are written by a background process, and publishing (checksums, rename, ``latest``,
    ``then``) happens when :class:`Saver` finalises the request. Otherwise returns the folder."""
    from megatron.core import dist_checkpointing

    rank = torch.distributed.get_rank()
    final = iter_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # a temp folder of a save that was cut off
        tmp.mkdir(parents=True)
    torch.distributed.barrier()
    state = _sharded(model, optimizer)
    state.update(step=step, extra=extra)
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(rng_state(), rng_file(tmp, rank))
    publish = partial(_publish_everywhere, root, step, tmp, history, mode, then)
    request = dist_checkpointing.save(canonical(state), str(tmp), async_sharded_save=background)
    if background:
        request.add_finalize_fn(publish)
        return request
    publish()
    return final


def _publish_everywhere(root: Path, step: int, tmp: Path, history: dict[str, Any] | None, mode: VerifyMode,
                        then: Callable[[], None] | None) -> None:
    """Collective: rank 0 publishes the written ``tmp`` folder as checkpoint ``step`` and names it
    in ``latest``; every rank learns whether that worked."""
    rank = torch.distributed.get_rank()
    torch.distributed.barrier()
    error = [_publish(tmp, iter_dir(root, step), mode) if rank == 0 else None]
    torch.distributed.broadcast_object_list(error, src=0)
    if error[0]:
        raise IntegrityError(error[0])
    if rank == 0:
        if history is not None:
            write_json(history_file(root, step), history)
        marker = Path(root) / LATEST
        marker.with_name(".latest.tmp").write_text(f"{step}\n")
        os.replace(marker.with_name(".latest.tmp"), marker)
        if then is not None:
            then()
    torch.distributed.barrier()


class Saver:
    """Checkpoint saves of a training run: synchronous, or in the background (``async_save``) with
    megatron's AsyncCallsQueue. A background save is published at a later :meth:`poll` once every
    rank's writer has finished; :meth:`close` waits for the last one (training never ends with a
    save unpublished)."""

    def __init__(self, background: bool) -> None:
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        self.queue = AsyncCallsQueue() if background else None

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.queue is None:
            save(*args, **kwargs)
            return
        self.poll(blocking=True)  # one save in flight at a time: its memory is staged
        self.queue.schedule_async_request(save(*args, **kwargs, background=True))

    def poll(self, blocking: bool = False) -> None:
        """Collective: publish the background saves every rank has finished writing."""
        if self.queue is not None:
            self.queue.maybe_finalize_async_calls(blocking=blocking)

    def close(self) -> None:
        if self.queue is not None:
            self.poll(blocking=True)
            self.queue.close()


def weights_folder(path: Path) -> Path:
    """The checkpoint folder ``pretrain.init_from`` names: a step folder, or a checkpoints root
    (its ``latest``)."""
    path = Path(path)
    step = latest_step(path) if (path / LATEST).exists() else None
    return iter_dir(path, step) if step is not None else path


def saved_steps(root: Path) -> list[int]:
    """Steps of the published checkpoints (not the ``.tmp`` folders of saves in progress)."""
    return sorted(int(p.name[5:]) for p in Path(root).glob("iter_*") if p.is_dir() and p.name[5:].isdigit())


def retained(steps: list[int], keep_last: int | None, keep_every: int | None, latest: int | None) -> set[int]:
    """The last ``keep_last`` steps, the multiples of ``keep_every`` and ``latest``; every step
    when ``keep_last`` is None."""
    if keep_last is None:
        return set(steps)
    every = {s for s in steps if keep_every and s % keep_every == 0}
    return set(steps[-keep_last:]) | every | ({latest} if latest else set())


def prune(root: Path, keep_last: int | None, keep_every: int | None, log: Any) -> list[int]:
    """Rank 0, after a save: delete the checkpoints retention does not keep (with their history
    files), one event each; returns the deleted steps. ``latest`` is never deleted."""
    steps = saved_steps(root)
    keep = retained(steps, keep_last, keep_every, latest_step(root))
    gone = [s for s in steps if s not in keep]
    for step in gone:
        shutil.rmtree(iter_dir(root, step))
        history_file(root, step).unlink(missing_ok=True)
        log.event("checkpoint_deleted", step=step, path=str(iter_dir(root, step)), keep_last=keep_last,
                  keep_every=keep_every)
    return gone


def history(root: Path, step: int | None, log: Any) -> dict[str, Any]:
    """Wall time and launches of the run up to checkpoint ``step`` (zero for a fresh run)."""
    if not step:
        return {"train_wall_s": 0.0, "segments": 0}
    path = history_file(root, step)
    if not path.is_file():  # e.g. a checkpoint copied without its history: only timing is lost
        log.event("history_missing", file=str(path), effect="train_wall_s and segments are unknown (null)")
        return {"train_wall_s": None, "segments": None}
    return json.loads(path.read_text())


def common_state(path: Path) -> dict[str, Any]:
    """A checkpoint's common (non-tensor) state: ``step``, ``scheduler``, ``extra``; read before
    the model is built (e.g. the data blocks a run trained on)."""
    from megatron.core import dist_checkpointing

    return dist_checkpointing.load_common_state_dict(str(path))


def load(path: Path, model: Any, optimizer: Any | None = None, scheduler: Any | None = None,
         restore_rng: bool = True) -> dict[str, Any]:
    """Load a checkpoint folder into ``model`` (a module or a list of pipeline chunks; and
    optimizer, scheduler, RNG when given);
    returns the common state (``step``, ``extra``). Call :func:`verify` first."""
    from megatron.core import dist_checkpointing

    path = Path(path)
    rng = rng_file(path, torch.distributed.get_rank())
    if restore_rng and not rng.is_file():
        raise IntegrityError(f"{rng}: missing; nothing was changed. {RESTART}")
    for part in _distributed_parts(optimizer):
        # Without Apex/TE its state_dict() reads the step from the torch optimizer's states, which
        # a fresh optimizer lacks: megatron's own dummy states, replaced in place by the load.
        if not part.optimizer.state:
            part._init_optimizer_states_with_dummy_values()
    loaded = dist_checkpointing.load(_sharded(model, optimizer, is_loading=True), str(path))
    chunks = _chunks(model)
    for key, chunk in zip(model_keys(len(chunks)), chunks, strict=True):
        chunk.load_state_dict(loaded[key])
    if optimizer is not None:
        # no_grad: DistributedOptimizer copies fp32 main params in place, and in fp32 those are views
        # of the model's parameters (megatron-core 0.16 does not guard this itself; seen on an H100).
        with torch.no_grad():
            optimizer.load_state_dict(loaded["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(loaded["scheduler"])
    if restore_rng:
        set_rng_state(torch.load(rng, weights_only=False))
    return {"step": int(loaded.get("step", 0)), "extra": loaded.get("extra", {})}
