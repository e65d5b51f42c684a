"""`ntkft spectrum` and `ntkft stop`: read a kernel's spectrum and apply the stopping rule."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import DataDir, app
from ._common import write_json as _write_json


def _print_spectrum(rep: dict, name: str = "") -> None:
    w, p, ci = rep["beta_window"], rep["beta_paper"], rep["beta_ci"]
    typer.echo(f"{name}beta (window k={w['k_min']}..{w['k_max']}, weights 1/k) = {w['beta']:.4f} "
               f"[{ci['low']:.4f}, {ci['high']:.4f}] ({int(ci['level'] * 100)}% subsampling CI), R^2 {w['r2']:.3f}")
    typer.echo(f"{name}beta (paper, k=1..{p['k_max']}) = {p['beta']:.4f}, R^2 {p['r2']:.3f}; decay looks "
               f"{rep['decay_model']['better']}; predicted error ~ N^-{rep['rate_exponent'] or float('nan'):.3f}")

@app.command()
def spectrum(kernels: list[str] = typer.Argument(None, help="kernel files or run folders"),
             model: str | None = None, task: str | None = None, n: int = 100, draws: int = 1,
             max_length: int = 64, out: str = "runs/spectrum", data_dir: str | None = DataDir) -> None:
    """Decay rate beta (both estimators, CI, sensitivity), predicted rate and a log-log figure."""
    from ..kernel import load_kernel_file
    from ..pipeline import compute_kernel_file
    from ..plots import spectrum_plot
    from ..spectrum import analyse, equivalent_n, over_draws

    if not kernels and not (model and task):
        raise typer.BadParameter("give kernel files, or --model and --task")
    named: dict[str, list] = {}
    if kernels:
        for path in kernels:
            kf = load_kernel_file(path)
            named.setdefault(f"{kf.meta.get('task', Path(path).stem)}", []).append(kf.K)
    else:
        for tname in task.split(","):
            for d in range(draws):
                kf = compute_kernel_file(model, tname, n=n, max_length=max_length, seed=d, data_dir=data_dir,
                                         out=Path(out) / f"{tname}-draw{d}")
                named.setdefault(tname, []).append(kf.K)
    result, curves = {}, {}
    for name, ks in named.items():
        rep = analyse(ks[0])
        if len(ks) > 1:
            rep["over_draws"] = {"paper": over_draws(ks, "paper"), "window": over_draws(ks, "window")}
        result[name] = rep
        curves[name] = {"lams": rep["eigenvalues"], "fits": [dict(rep["beta_window"], label="window")]}
        _print_spectrum(rep, f"{name}: ")
        if "over_draws" in rep:
            od = rep["over_draws"]["paper"]
            typer.echo(f"{name}: paper beta over {len(ks)} draws = {od['mean']:.4f} +- {od['std']:.4f}")
    if len(result) > 1:
        ref = next(iter(result))
        b_ref = result[ref]["beta_window"]["beta"]
        result["_relative_sample_size"] = {t: equivalent_n(100, b_ref, r["beta_window"]["beta"]) / 100
                                           for t, r in result.items() if not t.startswith("_")}
        typer.echo("samples needed relative to " + ref + ": " + ", ".join(
            f"{t} x{v:.2f}" for t, v in result["_relative_sample_size"].items()))
    _write_json(Path(out) / "spectrum.json", result)
    spectrum_plot(curves, Path(out) / "spectrum.png")
    typer.echo(f"wrote {out}/spectrum.json and {out}/spectrum.png")

@app.command()
def stop(kernel_file: str = typer.Argument(..., help="kernel file or run folder"),
         lr: float | None = typer.Option(None, help="kernel-GD step alpha on K/N (default min(1, 1/lambda_1))"),
         sigma: float | None = typer.Option(None, help="noise sd (estimated if not given)"),
         radius: float | None = typer.Option(None, help="RKHS radius R (estimated if not given)"),
         batch_size: int | None = typer.Option(None, help="express T_hat in epochs of this batch size"),
         out: str | None = None) -> None:
    """The RWY early-stopping rule on a kernel file: eta*, critical radius, T_hat (steps and epochs)."""
    from ..kernel import load_kernel_file
    from ..stopping import stop_report

    kf = load_kernel_file(kernel_file)
    y = kf.labels.double().numpy()
    if kf.meta.get("task_type") == "classification":
        y = 2 * y - 1  # +-1 targets for the scalar readout
    rep = stop_report(kf.K, y, kf.outputs.double().numpy(), step=lr, sigma=sigma, radius=radius,
                      batch_size=batch_size)
    d = rep.to_dict()
    for k_, v in d.items():
        typer.echo(f"{k_:14s} {v}")
    target = Path(out) if out else Path(kernel_file if Path(kernel_file).is_dir() else Path(kernel_file).parent)
    _write_json(target / "stop.json", d)
    typer.echo(f"wrote {target / 'stop.json'}")

