"""`ntkft kernel`: the eNTK of a model on task samples, written as a kernel file in a run folder.

Flags are generated from `pipeline.KernelConfig` (= `KernelOptions` + model, task and samples). Under torchrun
the same command shares the work units over the ranks (`kernel.executor.choose_executor` decides, once)."""

from __future__ import annotations

import typer

from ..pipeline import KernelConfig
from ._common import config_command, option

KERNEL_FLAGS = [option("out", "runs/kernel", "run folder (under torchrun seen by every rank: work units go to "
                                             "out/work/rankNNN)"),
                option("overwrite", False, "replace another run in --out", bool),
                option("data_dir", None, "task data directory (default: $NTKFT_DATA_DIR, then ./data)", str | None)]
SKIP = {"max_memory", "max_disk", "progress"}  # bytes: the CLI takes --max-memory-gb / --max-disk-gb


def _run(cfg: KernelConfig, out: str, overwrite: bool, data_dir: str | None, distributed: bool | None) -> None:
    from ..kernel.executor import choose_executor
    from ..pipeline import run_kernel

    ex = choose_executor(cfg.device, distributed)
    kf = run_kernel(cfg, out, data_dir=data_dir, overwrite=overwrite, executor=ex)
    if kf is None:  # a rank other than 0: rank 0 reports
        return
    sketch = f", sketch k = {kf.meta['sketch']['dim']}" if kf.meta.get("sketch") else ""
    ranks = f", {ex.world_size} ranks" if ex.name == "distributed" else ""
    rank0 = " (rank 0)" if ranks else ""
    typer.echo(f"K: {kf.K.shape[0]} x {kf.K.shape[1]}, {kf.meta['num_params']:,} parameters, method "
               f"{kf.meta['method']}{sketch}{ranks}, {kf.meta['seconds']}s, peak RSS {kf.meta['peak_rss_mb']:.0f} MiB"
               f"{rank0} -> {out}")


@config_command(KernelConfig, "kernel", skip=SKIP, extra=KERNEL_FLAGS)
def kernel(cfg: KernelConfig, out: str, overwrite: bool, data_dir: str | None) -> None:
    """Compute the eNTK of a model's scalar readout on task samples; write kernel.safetensors + meta.json.
    Under torchrun (`torchrun --nproc-per-node=N -m ntkft.cli kernel ...`) every rank computes its share."""
    _run(cfg, out, overwrite, data_dir, None)


@config_command(KernelConfig, "kernel-distributed", skip=SKIP, extra=KERNEL_FLAGS)
def kernel_distributed(cfg: KernelConfig, out: str, overwrite: bool, data_dir: str | None) -> None:
    """Deprecated alias of `ntkft kernel` under torchrun (which now detects the launch itself)."""
    import logging

    logging.getLogger("ntkft").warning("kernel-distributed is deprecated: use `torchrun ... -m ntkft.cli kernel`")
    _run(cfg, out, overwrite, data_dir, True)


__all__ = ["kernel", "kernel_distributed"]
