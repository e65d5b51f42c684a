"""`ntkft ...`: parse, call the API, print a summary, map errors to one line and an exit code."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from .errors import NtkftError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="eNTK, spectra and early stopping for fine-tuning.")
log = logging.getLogger("ntkft")

DataDir = typer.Option(None, "--data-dir", help="task data directory (default: $NTKFT_DATA_DIR, then ./data)")


def _task_arg(task: str, text_columns: str | None, label_column: str | None, task_type: str | None):
    """A built-in name, a spec file, or a CSV/TSV/JSONL file described by flags."""
    from .tasks import get_spec, user_task

    if Path(task).suffix.lower() in {".csv", ".tsv", ".jsonl"}:
        if not (text_columns and label_column and task_type):
            raise typer.BadParameter("a data file as --task needs --text-columns, --label-column and --task-type")
        return user_task(name=Path(task).stem, type=task_type, files={"train": str(Path(task).resolve())},
                         text_columns=text_columns, label_column=label_column, origin=task)
    return get_spec(task)


@app.command()
def models() -> None:
    """List the model aliases."""
    from .models import model_names

    for a in model_names():
        typer.echo(f"{a.name:14s} {a.kind:8s} {a.where:48s} {a.about}")


@app.command()
def tasks(data_dir: str | None = DataDir) -> None:
    """List the tasks with type, metrics, splits and row counts."""
    from .tasks import BUILTIN, load_task

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

    from .pipeline import build_readout, compute_kernel_file
    from .plots import spectrum_plot
    from .spectrum import analyse
    from .stopping import stop_report
    from .tasks import encode, load_task, subsample

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
    _write_json(Path(out) / "spectrum.json", rep)
    spectrum_plot({task: {"lams": rep["eigenvalues"], "fits": [dict(rep["beta_window"], label="window"),
                                                               dict(rep["beta_paper"], label="paper")]}},
                  Path(out) / "spectrum.png", title=f"eNTK spectrum, {model} on {task} (N={n})")
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
    from .pipeline import compute_kernel_file

    spec = _task_arg(task, text_columns, label_column, task_type)
    kf = compute_kernel_file(model, spec, n=n, max_length=max_length, seed=seed, params=params, method=method,
                             layers=layers, split=split, out=out, max_memory=int(max_memory_gb * 2**30),
                             data_dir=data_dir)
    typer.echo(f"K: {kf.K.shape[0]} x {kf.K.shape[1]}, {kf.meta['num_params']:,} parameters, method "
               f"{kf.meta['method']}, {kf.meta['seconds']}s, peak RSS {kf.meta['peak_rss_mb']:.0f} MiB -> {out}")


def _write_json(path: Path, obj) -> None:
    from ._io import write_json

    write_json(path, obj)


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
    from .kernel import load_kernel_file
    from .pipeline import compute_kernel_file
    from .plots import spectrum_plot
    from .spectrum import analyse, equivalent_n, over_draws

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
    from .kernel import load_kernel_file
    from .stopping import stop_report

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


def _ft_config(config: Optional[str], overrides: dict):
    from .finetune import FinetuneConfig

    given = {k: v for k, v in overrides.items() if v is not None}
    return FinetuneConfig.from_file(config, **given) if config else FinetuneConfig.make(**given)


@app.command()
def finetune(config: Optional[str] = typer.Option(None, help="YAML file with FinetuneConfig fields"),
             model: Optional[str] = None, task: Optional[str] = None,
             setting: Optional[str] = typer.Option(None, help="full | head | probe | linearized"),
             layers: Optional[int] = None, n_train: Optional[int] = None, n_test: Optional[int] = None,
             val: Optional[float] = None, max_length: Optional[int] = None, seed: Optional[int] = None,
             optimizer: Optional[str] = typer.Option(None, help="gd (full batch) | adamw"),
             lr: Optional[float] = None, weight_decay: Optional[float] = None, batch_size: Optional[int] = None,
             grad_accum: Optional[int] = None, max_steps: Optional[int] = None, warmup_steps: Optional[int] = None,
             schedule: Optional[str] = None, eval_every: Optional[int] = None, patience: Optional[int] = None,
             min_delta: Optional[float] = None, monitor: Optional[str] = None, mode: Optional[str] = None,
             drift_every: Optional[int] = None, drift_n: Optional[int] = None, save_every: Optional[int] = None,
             tensorboard: Optional[bool] = None, bf16: Optional[bool] = None,
             out: str = typer.Option("runs/finetune"), data_dir: Optional[str] = DataDir) -> None:
    """Fine-tune with hold-out early stopping; writes metrics.jsonl, result.json and model/ (HF, safetensors)."""
    from .finetune import finetune as run_ft

    kw = {k: v for k, v in locals().items() if k not in {"config", "out", "data_dir", "run_ft"}}
    if kw.get("val") is not None and float(kw["val"]).is_integer() and kw["val"] >= 1:
        kw["val"] = int(kw["val"])
    cfg = _ft_config(config, kw)
    res = run_ft(cfg, out, data_dir=data_dir)
    typer.echo(f"stopped at step {res.stopped_step}: {res.stop_reason}; best step {res.best_step} "
               f"(val {res.monitor} {res.best_val:.4f})")
    typer.echo("test (best on val): " + ", ".join(f"{k} {v:.4f}" for k, v in res.test_best.items()))
    typer.echo("test (last step):   " + ", ".join(f"{k} {v:.4f}" for k, v in res.test_last.items()))
    typer.echo(f"{res.samples_per_second:.1f} samples/s; wrote {out}/result.json, metrics.jsonl, model/")


@app.command()
def curve(config: Optional[str] = typer.Option(None, help="YAML file with FinetuneConfig fields"),
          model: Optional[str] = None, tasks: str = typer.Option("stsb,sts12,semrel"),
          sizes: str = typer.Option("32,64,128,256,512"), seeds: int = 3,
          setting: Optional[str] = None, layers: Optional[int] = None, optimizer: Optional[str] = None,
          lr: Optional[float] = None, batch_size: Optional[int] = None, max_steps: Optional[int] = None,
          eval_every: Optional[int] = None, patience: Optional[int] = None, n_test: Optional[int] = None,
          max_length: Optional[int] = None, out: str = typer.Option("runs/curves"),
          data_dir: Optional[str] = DataDir) -> None:
    """Learning curves over training sizes and seeds: curve.csv and curve_*.png; resumes a half-done sweep."""
    from .finetune import learning_curve

    kw = {k: v for k, v in locals().items()
          if k not in {"config", "out", "data_dir", "tasks", "sizes", "seeds", "learning_curve"}}
    cfg = _ft_config(config, kw)
    try:
        size_list = [int(x) for x in sizes.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--sizes must be comma-separated integers, got '{sizes}'") from None
    rows = learning_curve(cfg, [t.strip() for t in tasks.split(",") if t.strip()], size_list, seeds, out,
                          data_dir=data_dir)
    typer.echo(f"{len(rows)} rows in {out}/curve.csv; figures {out}/curve_*.png")


def main() -> None:
    """Entry point: NtkftError -> one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "httpx", "huggingface_hub", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        app(standalone_mode=True)
    except NtkftError as e:
        typer.echo(f"ntkft: error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("ntkft: interrupted (finished tiles are kept; rerun the same command to resume)", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
