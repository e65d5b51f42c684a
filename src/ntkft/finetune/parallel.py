"""Data-parallel fine-tuning on torch.distributed: each rank takes a shard of every optimiser step's samples,
gradients are summed over ranks (exactly the single-process gradient of the same global batch), rank 0
evaluates, decides early stopping and writes the run folder; its decisions are broadcast to every rank.

Launch with `torchrun --nproc-per-node N -m ntkft.cli finetune ...`: the torchrun environment is detected."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a step's sample indices."""
        return idx.tensor_split(self.world)[self.rank] if self.active else idx

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum gradients over ranks (each rank already weighted its samples by 1/global batch)."""
        if not self.active:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    def sum(self, value: float) -> float:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def ranks_from_env(device: torch.device | None = None) -> Ranks:
    """Join the torchrun process group if this process was launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return Ranks(dist.get_rank(), dist.get_world_size())
