"""A request to save a checkpoint and stop, made from outside the ranks.

Slurm sends USR1 to the batch shell ``slurm.signal_seconds`` before the time limit (and at
preemption where the cluster sets ``PreemptParameters=send_user_signal``). Signals do not reach
every rank of every node the same way, so the shell's trap only writes the flag file
``<checkpoints>/save_request`` (shared by all nodes); after every step the ranks ask
:meth:`SaveRequest.requested`, rank 0 looks at the file and all ranks get its answer, so every
rank saves and stops at the same step. A user may write the flag by hand for the same effect.
The batch shell removes the flag before each segment starts (pretrain.launch), the stage before
each launch.
"""

from __future__ import annotations

from pathlib import Path

FLAG = "save_request"


def flag_file(checkpoints: Path) -> Path:
    return Path(checkpoints) / FLAG


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class SaveRequest:
    """The flag file of the run in ``checkpoints``."""

    def __init__(self, checkpoints: Path) -> None:
        self.flag = flag_file(checkpoints)

    def requested(self) -> bool:
        """Collective when a process group is up (every rank calls it, all get rank 0's answer):
        whether a save-and-stop was asked for."""
        import torch
        import torch.distributed as dist

        seen = _rank() == 0 and self.flag.exists()
        if not (dist.is_available() and dist.is_initialized()):
            return seen
        # nccl broadcasts only CUDA tensors; gloo only CPU ones
        device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
        answer = torch.tensor([int(seen)], dtype=torch.int32, device=device)
        dist.broadcast(answer, src=0)
        return bool(answer.item())

    def clear(self) -> None:
        """Rank 0 removes the flag (a request already served)."""
        if _rank() == 0:
            self.flag.unlink(missing_ok=True)
