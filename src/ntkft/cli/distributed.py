"""`ntkft kernel-distributed`: `ntkft kernel` with its work units shared over the ranks of a torchrun launch.

Launch: `torchrun --nproc-per-node=N -m ntkft.cli kernel-distributed --model ... --out runs/k` (every rank runs
the same command). Rank 0 owns the run folder and writes the kernel file; every rank computes its share."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import typer

from ._common import DataDir, app
from ._common import task_arg as _task_arg
from .kernel import budgets


def compute_kernel_file_distributed(model: str, task, out: str | Path, device: str | None = None, **kw):
    """`pipeline.compute_kernel_file` on every rank, its `kernel_matrix` replaced by the distributed one.

    Rank 0 runs the whole pipeline (run folder, key, resume, kernel file); the other ranks join only when rank 0
    actually computes (not when `out` already holds the kernel) and write nothing but their work units.
    Returns the KernelFile on rank 0, None elsewhere."""
    import torch
    import torch.distributed as dist

    from .. import pipeline
    from ..kernel.api import parse_device
    from ..kernel.distributed import distributed_kernel_matrix, finish_work, init_group, local_device

    dev = local_device() if device in (None, "cuda") else parse_device(device)
    rank, _ = init_group(dev)
    work = Path(out) / "work"

    joined = []

    class _Finished(Exception):
        """Rank 0 found the finished kernel in `out`: nothing to compute."""

    def kernel_matrix(model, x1, x2=None, checkpoint_dir=None, **args):
        box = [True]
        dist.broadcast_object_list(box, src=0)  # rank 0 says whether the others join (ranks load in parallel)
        if not box[0]:
            raise _Finished
        joined.append(True)
        k = distributed_kernel_matrix(model, x1, x2, work_dir=work, keep_work=True, **args)
        return k if k is not None else torch.zeros(0)

    if rank == 0:
        with mock.patch.object(pipeline, "kernel_matrix", kernel_matrix):
            kf = pipeline.compute_kernel_file(model, task, out=out, device=str(dev), **kw)
        if not joined:  # `out` already held this kernel: release the others
            dist.broadcast_object_list([False], src=0)
        else:
            finish_work(work)
        return kf
    try:
        with mock.patch.object(pipeline, "kernel_matrix", kernel_matrix):
            pipeline.compute_kernel_file(model, task, out=None, device=str(dev),
                                         **{**kw, "progress": False, "overwrite": False})
    except _Finished:
        return None
    finish_work(work)
    return None


@app.command("kernel-distributed")
def kernel_distributed(model: str = typer.Option("smollm2-135m"), task: str = typer.Option("rte"),
                       n: int = typer.Option(100, "--samples", "--n", help="samples (under torchrun write --samples: "
                                                                           "torchrun takes --n for its --nnodes)"),
                       max_length: int = 64, seed: int = typer.Option(0, help="subsample, readout head and sketch seed"),
                       params: str = typer.Option("all", help="all | backbone | head | no-embeddings"),
                       method: str = typer.Option("auto", help="auto | factored | jacobian | jvp | sketch"),
                       layers: int | None = typer.Option(None, help="truncate the backbone after this block"),
                       split: str = "train",
                       out: str = typer.Option("runs/kernel", help="run folder (seen by every rank: work units go to "
                                                                   "out/work/rankNNN)"),
                       overwrite: bool = typer.Option(False, help="replace another run in --out"),
                       max_memory_gb: float | None = typer.Option(None, help="memory budget per rank for factors, tiles "
                                                                             "and K [default: a quarter of rank 0's available]"),
                       max_disk_gb: float | None = typer.Option(None, help="disk budget for spilled factors "
                                                                           "[default: no limit]"),
                       batch_size: int | None = typer.Option(None, help="samples per forward/backward "
                                                                        "[default: from the budget]"),
                       device: str | None = typer.Option(None, help="cpu | cuda (cuda:LOCAL_RANK, NCCL) "
                                                                    "[default: cuda when available, else cpu + gloo]"),
                       accumulate: str = typer.Option("host", help="where float64 K is summed: host | device"),
                       sketch_dim: int | None = typer.Option(None, help="projection dimension k of --method sketch"),
                       text_columns: str | None = None, label_column: str | None = None,
                       task_type: str | None = None, data_dir: str | None = DataDir) -> None:
    """`ntkft kernel` over the ranks of a torchrun launch (each work unit once; resumable); rank 0 writes the file."""

    max_memory, max_disk = budgets(max_memory_gb, max_disk_gb)
    spec = _task_arg(task, text_columns, label_column, task_type)
    kf = compute_kernel_file_distributed(model, spec, out=out, device=device, n=n, max_length=max_length, seed=seed,
                                         params=params, method=method, layers=layers, split=split,
                                         data_dir=data_dir, batch_size=batch_size,
                                         max_memory=max_memory, max_disk=max_disk,
                                         overwrite=overwrite, accumulate=accumulate, sketch_dim=sketch_dim)
    if kf is not None:
        import torch.distributed as dist

        typer.echo(f"K: {kf.K.shape[0]} x {kf.K.shape[1]}, {kf.meta['num_params']:,} parameters, method "
                   f"{kf.meta['method']}, {dist.get_world_size()} ranks, {kf.meta['seconds']}s, peak RSS "
                   f"{kf.meta['peak_rss_mb']:.0f} MiB (rank 0) -> {out}")
