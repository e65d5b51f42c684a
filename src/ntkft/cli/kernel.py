"""`ntkft kernel`: the eNTK of a model on task samples, written as a kernel file."""

from __future__ import annotations

import typer

from ._common import DataDir, app
from ._common import task_arg as _task_arg


@app.command()
def kernel(model: str = typer.Option("smollm2-135m"), task: str = typer.Option("rte"), n: int = 100,
           max_length: int = 64, seed: int = 0,
           params: str = typer.Option("all", help="all | backbone | head | no-embeddings"),
           method: str = typer.Option("auto", help="auto | factored | jacobian | jvp"),
           layers: int | None = typer.Option(None, help="truncate the backbone after this block"),
           split: str = "train", out: str = typer.Option("runs/kernel"),
           max_memory_gb: float = typer.Option(4.0, help="memory budget for features and tiles"),
           text_columns: str | None = None, label_column: str | None = None,
           task_type: str | None = None, data_dir: str | None = DataDir) -> None:
    """Compute the eNTK of a model's scalar readout on task samples; write kernel.safetensors + meta.json."""
    from ..pipeline import compute_kernel_file

    spec = _task_arg(task, text_columns, label_column, task_type)
    kf = compute_kernel_file(model, spec, n=n, max_length=max_length, seed=seed, params=params, method=method,
                             layers=layers, split=split, out=out, max_memory=int(max_memory_gb * 2**30),
                             data_dir=data_dir)
    typer.echo(f"K: {kf.K.shape[0]} x {kf.K.shape[1]}, {kf.meta['num_params']:,} parameters, method "
               f"{kf.meta['method']}, {kf.meta['seconds']}s, peak RSS {kf.meta['peak_rss_mb']:.0f} MiB -> {out}")

