"""Process groups under ``torchrun``: which process this is, starting and ending the group, summing across it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.distributed as dist

from utils.runtime import resolve_device

__all__ = ["DistInfo", "init_distributed", "finish_distributed", "all_reduce_sum", "barrier", "broadcast_from_main"]


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str) -> Tuple[DistInfo, torch.device]:
    """Start the process group when launched by ``torchrun`` (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_spec)
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device_spec != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda", info.local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # gloo for CPU tensors (counts, flags) also when the model's tensors go through NCCL.
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if use_cuda else "gloo")
    return info, device


def finish_distributed(info: DistInfo) -> None:
    """Wait for every process, then leave the process group (no-op for a single process)."""
    if info.enabled:
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op for a single process)."""
    if info.enabled:
        dist.barrier()


def broadcast_from_main(values: List[int], info: DistInfo) -> List[int]:
    """The first process's ``values`` on every process."""
    if not info.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.int64)
    dist.broadcast(tensor, src=0)
    return [int(v) for v in tensor.tolist()]
