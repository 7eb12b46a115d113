"""torch.distributed set-up for ``torchrun``: gloo on CPU, nccl on CUDA; rank 0 alone writes files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "cleanup", "setup"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (a no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if world <= 1 and not dist.is_initialized():
        return DistInfo(device=torch.device(device or ("cuda" if want_cuda else "cpu")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
        torch.cuda.set_device(local)
        return DistInfo(rank, world, torch.device("cuda", local))
    return DistInfo(rank, world, torch.device("cpu"))


def cleanup() -> None:
    """Leave the process group if this process joined one (a no-op otherwise)."""
    if dist.is_initialized():
        dist.destroy_process_group()
