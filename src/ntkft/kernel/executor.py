"""Where a kernel's work units run: this process (`LocalExecutor`) or the ranks of a torchrun launch
(`DistributedExecutor`). `choose_executor` is the one place that decides; the pipeline takes the executor as a
parameter and asks it four things: which device, whether this process writes the run folder, whether to compute
(rank 0 decides for every rank), and the kernel itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import ConfigError
from .api import kernel_matrix
from .options import KernelOptions, parse_device


class Executor(Protocol):
    """How one kernel is computed; `writes` is True for the one process that owns the run folder."""

    name: str
    writes: bool
    world_size: int

    def device(self, requested: str | None) -> str | None:
        """The device this process computes on, given the one asked for (None: the model's)."""
        ...

    def agree(self, compute: bool) -> bool:
        """The writer's `compute` (False: its run folder already holds the kernel), as every process sees it."""
        ...

    def kernel(self, model: Any, x: dict[str, torch.Tensor], options: KernelOptions, work_dir: Path | None,
               info: dict[str, Any]) -> torch.Tensor | None:
        """K (float64, host) where `writes`, None elsewhere; finished units are checkpointed in `work_dir`."""
        ...

    def finish(self, work_dir: Path | None) -> None:
        """Called by every process once the writer has saved K: drop the work units."""
        ...


class LocalExecutor:
    """Every unit in this process (`kernel_matrix`)."""

    name, writes, world_size = "local", True, 1

    def device(self, requested: str | None) -> str | None:
        """The device asked for."""
        return requested

    def agree(self, compute: bool) -> bool:
        """One process: its own decision."""
        return compute

    def kernel(self, model: Any, x: dict[str, torch.Tensor], options: KernelOptions, work_dir: Path | None,
               info: dict[str, Any]) -> torch.Tensor | None:
        """`kernel_matrix` (its checkpoint removes its own files after success)."""
        return kernel_matrix(model, x, options=options, checkpoint_dir=work_dir, info=info)

    def finish(self, work_dir: Path | None) -> None:
        """Nothing left: `kernel_matrix` cleaned up."""


class DistributedExecutor:
    """The units shared over the ranks of a torchrun launch (`distributed_kernel_matrix`); rank 0 writes."""

    name = "distributed"

    def __init__(self, device: str | None = None) -> None:
        from .distributed import init_group, local_device

        self.dev = local_device() if device in (None, "cuda") else parse_device(device)
        self.rank, self.world_size = init_group(self.dev)
        self.writes = self.rank == 0

    def device(self, requested: str | None) -> str | None:
        """cuda:LOCAL_RANK (or the device asked for), else the CPU."""
        return str(self.dev)

    def agree(self, compute: bool) -> bool:
        """Rank 0's decision broadcast to every rank (the others load model and data meanwhile)."""
        import torch.distributed as dist

        box = [compute]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])

    def kernel(self, model: Any, x: dict[str, torch.Tensor], options: KernelOptions, work_dir: Path | None,
               info: dict[str, Any]) -> torch.Tensor | None:
        """This rank's share; K on rank 0. The work units stay until `finish` (K must be saved first)."""
        from .distributed import distributed_kernel_matrix

        if work_dir is None:
            raise ConfigError("distributed: the ranks need a run folder they all see (give --out)")
        opts = options.model_copy(update={"progress": options.progress and self.writes})  # one bar: rank 0's
        return distributed_kernel_matrix(model, x, options=opts, work_dir=work_dir, keep_work=True, info=info)

    def finish(self, work_dir: Path | None) -> None:
        """Every rank drops its work units once rank 0 has written K (collective)."""
        from .distributed import finish_work

        if work_dir is not None:
            finish_work(work_dir)


def choose_executor(device: str | None = None, distributed: bool | None = None) -> Executor:
    """The executor for this process: distributed under torchrun (RANK, WORLD_SIZE, MASTER_ADDR set) unless
    `distributed` says otherwise; `distributed=True` without torchrun is a ConfigError saying how to launch."""
    from .distributed import in_torchrun

    if distributed is None:
        distributed = in_torchrun()
    return DistributedExecutor(device) if distributed else LocalExecutor()


__all__ = ["DistributedExecutor", "Executor", "LocalExecutor", "choose_executor"]
