"""torchrun support: the device of this process, and the rank, world size and collectives of a run."""
from __future__ import annotations

import os
from typing import Any, List, Optional

import torch


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available (one GPU per torchrun process), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


class Dist:
    """Rank, world size and the three collectives explain_dataset needs; a no-op for one process."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.dist, self.device, self.owned = dist, device, False
        if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # launched by torchrun (env:// rendezvous) but nobody initialised the group: do it, undo it after
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend=backend)
            self.owned = True
        self.active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.active else 0
        self.world_size = dist.get_world_size() if self.active else 1

    def barrier(self) -> None:
        if self.active:
            if self.dist.get_backend() == "nccl":
                self.dist.barrier(device_ids=[torch.cuda.current_device()])
            else:
                self.dist.barrier()

    def gather(self, obj) -> List[Any]:
        """Every rank's ``obj`` (on every rank)."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        self.dist.all_gather_object(out, obj)
        return out

    def all_ok(self, error: Optional[BaseException]) -> Optional[str]:
        """Agree on failure: every rank learns the first rank's error message, so none waits at a barrier."""
        messages = self.gather(None if error is None else f"{type(error).__name__}: {error}")
        return next((m for m in messages if m is not None), None)

    def close(self) -> None:
        if self.owned and self.dist.is_initialized():
            self.dist.destroy_process_group()
