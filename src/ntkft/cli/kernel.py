"""`ntkft kernel`: the eNTK of a model on task samples, written as a kernel file in a run folder."""

from __future__ import annotations

import typer

from ._common import DataDir, app
from ._common import task_arg as _task_arg


def budgets(max_memory_gb: float | None, max_disk_gb: float | None) -> tuple[int | None, int | None]:
    """--max-memory-gb and --max-disk-gb checked (finite, > 0; disk may be 0) and in bytes (None = default)."""
    from ..config import finite_positive

    mem = finite_positive("max_memory_gb", max_memory_gb)
    disk = None
    if max_disk_gb is not None:
        disk = 0.0 if max_disk_gb == 0 else finite_positive("max_disk_gb", max_disk_gb)
    return (int(mem * 2**30) if mem is not None else None), (int(disk * 2**30) if disk is not None else None)


@app.command()
def kernel(model: str = typer.Option("smollm2-135m"), task: str = typer.Option("rte"), n: int = 100,
           max_length: int = 64, seed: int = typer.Option(0, help="subsample, readout head and sketch seed"),
           params: str = typer.Option("all", help="all | backbone | head | no-embeddings"),
           method: str = typer.Option("auto", help="auto | factored | jacobian | jvp | sketch"),
           layers: int | None = typer.Option(None, help="truncate the backbone after this block"),
           split: str = "train", out: str = typer.Option("runs/kernel", help="run folder"),
           overwrite: bool = typer.Option(False, help="replace another run in --out"),
           max_memory_gb: float | None = typer.Option(None, help="memory budget for factors, tiles and K "
                                                                 "[default: a quarter of the available memory; "
                                                                 "on a GPU 80% of its free memory]"),
           max_disk_gb: float | None = typer.Option(None, help="disk budget for spilled factors [default: no limit]"),
           batch_size: int | None = typer.Option(None, help="samples per forward/backward [default: from the budget]"),
           device: str | None = typer.Option(None, help="cpu | cuda | cuda:N [default: cpu]"),
           accumulate: str = typer.Option("host", help="where float64 K is summed: host | device"),
           sketch_dim: int | None = typer.Option(None, help="projection dimension k of --method sketch"),
           text_columns: str | None = None, label_column: str | None = None,
           task_type: str | None = None, data_dir: str | None = DataDir) -> None:
    """Compute the eNTK of a model's scalar readout on task samples; write kernel.safetensors + meta.json."""
    from ..pipeline import compute_kernel_file

    max_memory, max_disk = budgets(max_memory_gb, max_disk_gb)
    spec = _task_arg(task, text_columns, label_column, task_type)
    kf = compute_kernel_file(model, spec, n=n, max_length=max_length, seed=seed, params=params, method=method,
                             layers=layers, split=split, out=out, data_dir=data_dir, batch_size=batch_size,
                             max_memory=max_memory, max_disk=max_disk, overwrite=overwrite,
                             device=device, accumulate=accumulate, sketch_dim=sketch_dim)
    sketch = f", sketch k = {kf.meta['sketch']['dim']}" if kf.meta.get("sketch") else ""
    typer.echo(f"K: {kf.K.shape[0]} x {kf.K.shape[1]}, {kf.meta['num_params']:,} parameters, method "
               f"{kf.meta['method']}{sketch}, {kf.meta['seconds']}s, peak RSS {kf.meta['peak_rss_mb']:.0f} MiB -> {out}")
