"""`ntkft models`, `ntkft tasks`, `ntkft demo`."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ..errors import NtkftError
from ._common import DataDir, app
from ._common import write_json as _write_json
from .spectrum import _print_spectrum


@app.command()
def models() -> None:
    """List the model aliases."""
    from ..models import model_names

    for a in model_names():
        typer.echo(f"{a.name:14s} {a.kind:8s} {a.where:48s} {a.about}")

@app.command()
def tasks(data_dir: str | None = DataDir) -> None:
    """List the tasks with type, metrics, splits and row counts."""
    from ..tasks import BUILTIN, load_task
    from ..tasks.data import data_dir as check_data_dir

    if data_dir is not None:
        check_data_dir(data_dir)  # a --data-dir that is not a directory: one line and exit 2, not rows of "unavailable"
    for name, spec in BUILTIN.items():
        counts = []
        for split in spec.split_names():
            try:
                counts.append(f"{split}={len(load_task(name, split, data_dir))}")
            except NtkftError as e:
                counts.append(f"{split}=unavailable ({e})")
        typer.echo(f"{name:16s} {spec.type:14s} {'+'.join(spec.metrics):22s} test={spec.test_split:10s} "
                   f"{' '.join(counts)}")

@app.command()
def demo(out: str = typer.Option("runs/demo", help="output folder"), model: str = "smollm2-135m",
         task: str = "rte", n: int = typer.Option(32, help="samples for the kernel"),
         max_length: int = 64, data_dir: str | None = DataDir) -> None:
    """The main job on offline defaults: encode real pairs, eNTK of a real model, spectrum and stopping rule."""
    import torch

    from ..pipeline import build_readout, compute_kernel_file
    from ..plots import spectrum_plot
    from ..spectrum import analyse
    from ..stopping import stop_report
    from ..tasks import encode, load_task, subsample

    t0 = time.time()
    loaded, readout = build_readout(model)
    pairs = subsample(load_task(task, "train", data_dir), 8, seed=0)
    enc = encode(loaded.tokenizer, loaded.kind, pairs, max_length=max_length)
    with torch.no_grad():
        h = readout.features(enc["input_ids"], enc["attention_mask"])
    typer.echo(f"{model}: {sum(p.numel() for p in loaded.backbone.parameters()):,} parameters, loaded and encoded "
               f"8 {task} pairs in {time.time() - t0:.1f}s; pooled outputs {tuple(h.shape)}")
    kf = compute_kernel_file(model, task, n=n, max_length=max_length, out=out, data_dir=data_dir)
    typer.echo(f"eNTK: {kf.K.shape[0]} x {kf.K.shape[1]} over {kf.meta['num_params']:,} parameters, "
               f"method {kf.meta['method']}, {kf.meta['seconds']}s, peak RSS {kf.meta['peak_rss_mb']:.0f} MiB")
    rep = analyse(kf.K, ci_draws=100)
    _write_json(Path(out) / "spectrum.json", rep.to_dict())
    spectrum_plot({task: rep}, Path(out) / "spectrum.png", title=f"eNTK spectrum, {model} on {task} (N={n})")
    _print_spectrum(rep)
    if kf.meta["task_type"] == "classification":
        y = kf.labels.double().numpy() * 2 - 1
    else:
        y = kf.labels.double().numpy()
    st = stop_report(kf.K, y, kf.outputs.numpy())
    _write_json(Path(out) / "stop.json", st.to_dict())
    typer.echo(f"RWY stopping rule (step {st.step:.3g}): T_hat = {st.t_hat} steps; eta* = {st.eta_star:.4g}, "
               f"eps_hat = {st.eps_hat:.4g}; sigma {st.sigma:.3g} ({st.sigma_source.split(':')[0]})")
    typer.echo(f"wrote {out}/kernel.safetensors, meta.json, spectrum.json, spectrum.png, stop.json "
               f"({time.time() - t0:.1f}s total)")

