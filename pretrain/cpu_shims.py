"""Let megatron-core 0.16.1 run on a CPU-only torch (see ../shared/STACK.md).

megatron-core asks CUDA for the current device, keeps its RNG states in CUDA generators and
creates small tensors with ``device='cuda'`` / ``.cuda()`` in its DDP, optimizer, grad clipping and
checkpointing code. :func:`install` redirects exactly those calls to the CPU. It does nothing
when CUDA is available, so GPU runs go through megatron-core unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch

_SAVED: list[tuple[Any, str, Any]] = []  # (owner, attribute, original) while installed
# torch factories megatron calls with device='cuda'.
_FACTORIES = ("tensor", "zeros", "ones", "empty", "full", "arange", "zeros_like", "empty_like")


def needed() -> bool:
    return not torch.cuda.is_available()


def _cpu_device(device: Any) -> Any:
    if device is None:
        return None
    if isinstance(device, int):
        return torch.device("cpu")
    if str(device).startswith("cuda"):
        return torch.device("cpu")
    return device


def _redirect(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        if kwargs.get("pin_memory"):  # e.g. RoPE under context parallelism: no pinned memory without CUDA
            kwargs["pin_memory"] = False
        return fn(*args, **kwargs)

    wrapper.__dasi_shim__ = True  # type: ignore[attr-defined]
    return wrapper


def _tensor_cuda(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return self


def _tensor_to(orig: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    @functools.wraps(orig)
    def to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        args = tuple(_cpu_device(a) if isinstance(a, (str, torch.device)) else a for a in args)
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        return orig(self, *args, **kwargs)

    return to


class CpuRNGStatesTracker:
    """megatron's named RNG-state tracker, kept in CPU generator states."""

    def __init__(self) -> None:
        self.reset()

    def is_initialized(self) -> bool:
        return self._is_initialized

    def reset(self) -> None:
        self._is_initialized = False
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def get_states(self) -> dict[str, torch.Tensor]:
        return dict(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._is_initialized = True
        self.states_ = dict(states)

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_ or name in self.states_:
            raise ValueError(f"rng state {name!r} / seed {seed} already added")
        self.seeds_.add(seed)
        saved = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(saved)

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng") -> Iterator[None]:
        if name not in self.states_:
            raise KeyError(f"rng state {name!r} was never added")
        saved = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(saved)


def _clip_grad_by_total_norm_cpu(parameters: Any, max_norm: float, total_norm: float,
                                 use_decoupled_grad: bool = False) -> None:
    """megatron's clip_grad_by_total_norm_fp32 without its CUDA tensor-type assertion."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr) for p in parameters if getattr(p, attr, None) is not None]
    coeff = max_norm / (total_norm + 1.0e-6)
    if coeff < 1.0:
        torch._foreach_mul_([g.detach() for g in grads], coeff)


def _gloo_reduce_scatter(output: torch.Tensor, input_: torch.Tensor, group: Any = None,
                         async_op: bool = False) -> None:
    """reduce_scatter_tensor for gloo, which lacks it: all-reduce, keep this rank's slice (sequence
    parallelism reduce-scatters activations along dim 0)."""
    full = input_.clone()
    torch.distributed.all_reduce(full, group=group)
    rank = torch.distributed.get_rank(group)
    output.copy_(full[rank * output.size(0):(rank + 1) * output.size(0)])


def _gloo_all_gather(output: torch.Tensor, input_: torch.Tensor, group: Any = None,
                     async_op: bool = False) -> None:
    """all_gather_into_tensor through gloo's list all_gather (dim 0)."""
    parts = list(output.chunk(torch.distributed.get_world_size(group)))
    torch.distributed.all_gather(parts, input_.contiguous(), group=group)


def install_rng_tracker() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    if not isinstance(mrandom._CUDA_RNG_STATE_TRACKER, CpuRNGStatesTracker):
        mrandom._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
        mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def _patch(owner: Any, name: str, value: Any) -> None:
    _SAVED.append((owner, name, getattr(owner, name)))
    setattr(owner, name, value)


def installed() -> bool:
    return bool(_SAVED)


def install() -> bool:
    """Install the CPU redirections (idempotent); returns whether they are active."""
    if not needed():
        return False
    if not _SAVED:
        import megatron.core.optimizer.clip_grads as clip_grads
        import megatron.core.optimizer.optimizer as moptim
        import megatron.core.tensor_parallel.mappings as mappings
        import megatron.core.tensor_parallel.random as mrandom

        _patch(torch.cuda, "current_device", lambda: "cpu")
        _patch(torch.cuda, "synchronize", lambda *a, **k: None)
        _patch(torch.cuda, "empty_cache", lambda: None)
        _patch(torch.cuda, "manual_seed", lambda seed: None)
        for name in _FACTORIES:
            _patch(torch, name, _redirect(getattr(torch, name)))
        _patch(torch.Tensor, "cuda", _tensor_cuda)
        _patch(torch.Tensor, "to", _tensor_to(torch.Tensor.to))
        _patch(clip_grads, "clip_grad_by_total_norm_fp32", _clip_grad_by_total_norm_cpu)
        _patch(moptim, "clip_grad_by_total_norm_fp32", _clip_grad_by_total_norm_cpu)
        _patch(mappings, "dist_reduce_scatter_func", _gloo_reduce_scatter)
        _patch(mappings, "dist_all_gather_func", _gloo_all_gather)
        # activation recompute saves and restores "the CUDA RNG": here the CPU generator is it
        _patch(mrandom, "_get_cuda_rng_state", lambda *a, **k: torch.get_rng_state())
        _patch(mrandom, "_set_cuda_rng_state", lambda state, *a, **k: torch.set_rng_state(state))
    install_rng_tracker()
    return True


def uninstall() -> None:
    """Put every patched attribute back (other libraries, e.g. transformers, see plain torch)."""
    while _SAVED:
        owner, name, original = _SAVED.pop()
        setattr(owner, name, original)
