"""Process-group set-up for `torchrun` (DDP: NCCL on GPUs, gloo on CPUs) and the few collective
operations the trainer needs. Without torchrun's environment everything runs in one process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of `values` over all processes (identity with one process)."""
        return self.sum_tensor(torch.tensor(values, dtype=torch.float64)).tolist()

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over all processes, returned on the CPU."""
        if self.world == 1:
            return tensor
        total = tensor.to(self.device, torch.float64)
        dist.all_reduce(total)
        return total.cpu()

    def gather(self, value: object) -> list[object]:
        """Every process's `value` (picklable), in rank order."""
        if self.world == 1:
            return [value]
        values: list[object] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def start(device_name: str) -> Processes:
    """Join torchrun's process group when launched by it (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(device_name, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(rank, world, device)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
