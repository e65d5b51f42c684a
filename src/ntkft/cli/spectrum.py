"""`ntkft spectrum` and `ntkft stop`: a kernel's spectrum and the RWY stopping rule, on any kernel file."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import Field

from ..config import StrictModel
from ..errors import NtkftError
from ..errors import param_error as _bad
from ._common import config_command, option

if TYPE_CHECKING:
    from ..kernel.io import LoadedKernel
    from ..spectrum import SpectrumReport
    from ..spectrum.decay import Estimator

ESTIMATORS: tuple[Estimator, ...] = ("matched", "window", "paper")
FILES_HELP = ("kernel files: ntkft kernel folders or files, safetensors with K (+ labels, outputs), .npy, .npz "
              "or .pt (one tensor)")


class SpectrumConfig(StrictModel):
    """`ntkft spectrum`: which kernels, how many simulated kernels for the beta interval, at which level."""

    draws_of: bool = Field(False, description="the kernel files are independent draws of one setting: also report "
                                              "beta mean +- sd over them (the paper's protocol)")
    model: str | None = Field(None, description="compute kernels of this model (with --task) instead of reading files")
    task: str | None = Field(None, description="comma-separated tasks for --model")
    n: int = Field(100, ge=4, description="samples per computed kernel (--model)")
    draws: int = Field(1, ge=1, description="independent sample draws per task for --model (seeds 0..draws-1)")
    max_length: int = Field(64, ge=2, description="tokens per sample for --model")
    ci_draws: int = Field(40, ge=0, description="simulated kernels behind the beta interval (0: no interval; 40 = "
                          "estimate_beta's default)")
    level: float = Field(0.9, gt=0, lt=1, description="confidence level of the beta interval")
    seed: int = Field(0, ge=0, description="seed of the estimator's half-subsets and simulated kernels")
    all_estimators: bool = Field(False, description="also print the descriptive window fit and the paper's fit "
                                                    "(eq 31-32), by their names; beta is always the headline")


class StopConfig(StrictModel):
    """`ntkft stop`: the RWY rule's inputs; sigma and the radius are estimated from the kernel when not given."""

    step: float | None = Field(None, gt=0, description="kernel-GD step alpha on K/N (default min(1, 1/lambda_1))")
    sigma: float | None = Field(None, gt=0, description="noise standard deviation (estimated if not given)")
    radius: float | None = Field(None, gt=0, description="RKHS radius R = ||f_PT - f*||_H (estimated if not given)")
    batch_size: int | None = Field(None, ge=1, description="also express T_hat in epochs of this batch size")
    lr: float | None = Field(None, gt=0, description="learning rate of `ntkft finetune --optimizer gd` that the printed "
                             "action (--max-steps = T_hat alpha / (2 lr)) is for (default alpha/2: one fine-tuning "
                             "step per kernel-GD step)")


def _files_arg(required: bool) -> inspect.Parameter:
    arg = typer.Argument(... if required else None, help=FILES_HELP, show_default=False, metavar="FILE")
    return inspect.Parameter("kernels", inspect.Parameter.KEYWORD_ONLY, annotation=list[str] | None if not required
                             else str, default=arg)


def _in_file(path: Path | str, e: NtkftError) -> NtkftError:
    """The same error with the kernel file named in front (analysis errors do not know the file)."""
    msg = str(e)
    if msg.startswith(str(path)):
        return e
    return type(e)(f"{msg} ({path})" if e.param else f"{path}: {msg}", param=e.param)  # a flag's error keeps it in front


def _print_spectrum(rep: SpectrumReport, name: str = "", all_estimators: bool = False) -> None:
    """One line per kernel: beta with its interval and what it was fitted on; with --all-estimators a second line
    with the descriptive fits by their names."""
    b, w, p = rep.beta, rep.beta_window, rep.beta_paper
    ci = (f"[{b.low:.4f}, {b.high:.4f}] ({round(b.level * 100)}% {b.interval} CI)" if b.low is not None
          and b.high is not None else f"(no interval: {b.note})")
    zeros = f"; {rep.num_zero} of {rep.n} eigenvalues floored to 0" if rep.num_zero else ""
    shift = f", index shift {b.shift:+.2f}" if b.shift else ""
    rate = f"{rep.rate_exponent:.3f}" if rep.rate_exponent is not None else "n/a"
    shape = f"; decay looks {rep.decay_model.better}" if rep.decay_model is not None else ""
    typer.echo(f"{name}N={rep.n}: beta = {b.beta:.4f} {ci}; fitted on k={b.k_min}..{b.k_max}{shift}{zeros}; "
               f"predicted error ~ N^-{rate}{shape}")
    if all_estimators:
        typer.echo(f"{name}  other estimators (descriptive, not beta): window fit (k={w.k_min}..{w.k_max}, weights 1/k) "
                   f"{w.beta:.4f}, R^2 {w.r2:.3f}; paper eq 31-32 (k=1..{p.k_max}) {p.beta:.4f}, R^2 {p.r2:.3f} "
                   f"uncentred / {p.r2_centred:.3f} centred")


def _kernel_key(loaded: list[LoadedKernel], paths: list[str]) -> list[dict[str, str]]:
    """What the inputs were: each path, the file actually read and its sha256."""
    from .._runs import file_digest

    return [{"path": p, "file": str(lk.source), "sha256": file_digest(lk.source)} for p, lk in zip(paths, loaded)]


def _unique(names: list[str], paths: list[str]) -> list[str]:
    """Row names: the task or file name, or the path where two rows would share a name."""
    return [nm if names.count(nm) == 1 else p for nm, p in zip(names, paths)]


@dataclass
class _Row:
    """One row of `ntkft spectrum`: a kernel (or several draws of one setting) and where it came from."""

    name: str
    mats: list[Any]
    where: str
    precision: float = 0.0
    sketch: dict[str, Any] | None = None  # the kernel file's sketch record (dim k, seed) when K is a sketch


def _analyse_rows(rows: list[_Row], cfg: SpectrumConfig) -> tuple[dict[str, Any], dict[str, SpectrumReport]]:
    """Every row's report (errors name the row's file), the draws summary and relative sample sizes."""
    from ..spectrum import analyse, equivalent_n, over_draws
    from ..spectrum.eig import FLOOR

    result: dict[str, Any] = {}
    reports: dict[str, SpectrumReport] = {}
    for row in rows:
        floor = max(FLOOR, 2 * row.precision)  # float16/bfloat16 files cannot resolve smaller eigenvalues
        try:
            rep = analyse(row.mats[0], ci_draws=cfg.ci_draws, level=cfg.level, seed=cfg.seed, name=row.name,
                          floor=floor)
            if len(row.mats) > 1:
                rep.over_draws = {e: over_draws(row.mats, e, seed=cfg.seed, floor=floor) for e in ESTIMATORS}
        except NtkftError as e:
            raise _in_file(row.where, e) from None
        reports[row.name], result[row.name] = rep, rep.to_dict()
        if row.sketch:
            result[row.name]["sketch"] = row.sketch
    if cfg.draws_of:
        floor = max(FLOOR, 2 * max(r.precision for r in rows))
        try:
            ods = {e: over_draws([r.mats[0] for r in rows], e, seed=cfg.seed, floor=floor) for e in ESTIMATORS}
        except NtkftError as e:
            raise _in_file(", ".join(r.where for r in rows), e) from None
        result["_over_draws"] = {e: od.to_dict() for e, od in ods.items()}
    if len(reports) > 1 and all(r.beta.beta > 0 for r in reports.values()):
        ref = next(iter(reports.values())).beta.beta
        result["_relative_sample_size"] = {t: equivalent_n(100, ref, r.beta.beta) / 100 for t, r in reports.items()}
    return result, reports


def _print_rows(result: dict[str, Any], reports: dict[str, SpectrumReport], all_estimators: bool = False) -> None:
    def label(est: str) -> str:
        return "beta" if est == "matched" else f"{est} fit"

    for name, rep in reports.items():
        sk = result[name].get("sketch")
        if sk:
            typer.echo(f"{name}: a sketched eNTK (k = {sk.get('dim')}, seed {sk.get('seed')}, unbiased for K): "
                       "its small eigenvalues carry the sketch's noise")
        _print_spectrum(rep, f"{name}: ", all_estimators)
        for est, od in rep.over_draws.items():
            if all_estimators or est == "matched":
                typer.echo(f"{name}:   {label(est)} over {len(od.betas)} draws = {od.mean:.4f} +- {od.std:.4f}")
    for est, od in result.get("_over_draws", {}).items():
        if all_estimators or est == "matched":
            typer.echo(f"over {len(od['betas'])} draws: {label(est)} = {od['mean']:.4f} +- {od['std']:.4f}")
    if "_relative_sample_size" in result:
        typer.echo(f"samples needed relative to {next(iter(reports))} (same constant, from beta): "
                   + ", ".join(f"{t} x{v:.2f}" for t, v in result["_relative_sample_size"].items()))


@config_command(SpectrumConfig, "spectrum",
                extra=[_files_arg(False), option("out", None, "output run folder (default: FILE/spectrum for one ntkft kernel "
                                                             "run folder, like stop; else runs/spectrum)", str | None),
                       option("overwrite", False, "replace another run in --out", bool),
                       option("data_dir", None, "task data directory for --model (default: $NTKFT_DATA_DIR, then "
                                                "./data)", str | None)])
def spectrum(cfg: SpectrumConfig, kernels: list[str] | None, out: str | None, overwrite: bool,
             data_dir: str | None) -> None:
    """Decay rate beta of each kernel with its interval, one row per file (--all-estimators: also the window and paper
    fits, by their names)."""
    from .._runs import RunFolder
    from ..kernel.io import load_kernel
    from ..plots import spectrum_plot

    files = list(kernels or [])
    if files and (cfg.model or cfg.task):
        raise _bad("model", "give kernel files or --model with --task, not both")
    if not files and not (cfg.model and cfg.task):
        raise _bad("task" if cfg.model else "model", "give kernel files, or --model and --task")
    if cfg.draws_of and len(files) < 2:
        raise _bad("draws_of", f"needs at least 2 kernel files, got {len(files)}")
    key: dict[str, Any] = {"config": cfg.model_dump(exclude={"all_estimators"})}  # printing only: not in the key
    if files:  # every file read, checked and analysed before anything is written
        loaded = [load_kernel(f) for f in files]
        key["kernels"] = _kernel_key(loaded, files)
        names = _unique([lk.name for lk in loaded], files)
        rows = [_Row(nm, [lk.K], str(lk.source), lk.precision, lk.meta.get("sketch") or None)
                for nm, lk in zip(names, loaded)]
        result, reports = _analyse_rows(rows, cfg)
        out = str(_default_out(loaded[0], files[0], out, "spectrum") if len(files) == 1 else Path(out or "runs/spectrum"))
        rf = RunFolder(out, "spectrum", key, overwrite=overwrite)
        rf.open()
    else:
        out = out or "runs/spectrum"  # the kernels are computed into the run folder (each its own kernel run, resumable)
        from ..pipeline import compute_kernel_file

        assert cfg.model is not None and cfg.task is not None
        rf = RunFolder(out, "spectrum", key, overwrite=overwrite)
        rf.open()
        rows = []
        for tname in [t.strip() for t in cfg.task.split(",") if t.strip()]:
            mats = [compute_kernel_file(cfg.model, tname, n=cfg.n, max_length=cfg.max_length, seed=d, data_dir=data_dir,
                                        out=rf.path(f"{tname}-draw{d}"), overwrite=overwrite).K.double().numpy()
                    for d in range(cfg.draws)]
            rows.append(_Row(tname, mats, str(Path(out) / f"{tname}-draw0")))
        result, reports = _analyse_rows(rows, cfg)
    _print_rows(result, reports, cfg.all_estimators)
    rf.write_json("spectrum.json", result)
    spectrum_plot(reports, rf.path("spectrum.png"))
    rf.finish(command="spectrum", rows=list(reports))
    typer.echo(f"wrote {out}/spectrum.json, spectrum.png, meta.json")


def _default_out(lk: LoadedKernel, path: str, out: str | None, sub: str) -> Path:
    """--out, else FILE/SUB inside an ntkft kernel run folder, else runs/SUB (never into a foreign folder): where
    `spectrum` and `stop` write by default, one rule for both."""
    import json

    if out:
        return Path(out)
    folder = Path(path)
    marker = folder / "meta.json"
    if folder.is_dir() and lk.source.parent == folder and marker.is_file():
        try:
            meta = json.loads(marker.read_text())
        except (ValueError, OSError, UnicodeDecodeError):
            meta = None
        if isinstance(meta, dict) and meta.get("ntkft_run") and meta.get("kind") == "kernel":
            return folder / sub
    return Path("runs") / sub


@config_command(StopConfig, "stop",
                extra=[_files_arg(True), option("out", None, "output run folder (default: FILE/stop for an ntkft "
                                                             "kernel run folder, else runs/stop)", str | None),
                       option("overwrite", False, "replace another run in --out", bool)])
def stop(cfg: StopConfig, kernels: str, out: str | None, overwrite: bool) -> None:
    """The RWY early-stopping rule on a kernel file with targets: T_hat, and the `ntkft finetune` steps it means.

    Prints the rule's numbers (eta*, critical radius, T_hat in kernel-GD steps), then an action: the
    `ntkft finetune --optimizer gd --lr LR --max-steps S` command (S = T_hat alpha / (2 LR)) with its epochs at
    --batch-size, and the error bound in the targets' units beside the constant predictor's (vacuous when above it)."""
    from .._runs import RunFolder, file_digest
    from ..kernel.io import load_kernel
    from ..stopping import finetune_action, stop_report

    lk = load_kernel(kernels)
    y = lk.targets()
    try:
        rep = stop_report(lk.K, y, lk.outputs, step=cfg.step, sigma=cfg.sigma, radius=cfg.radius,
                          batch_size=cfg.batch_size)
        act = finetune_action(rep, y, cfg.lr or rep.step / 2, cfg.batch_size)
    except NtkftError as e:
        raise _in_file(lk.source, e) from None
    target = _default_out(lk, kernels, out, "stop")
    rf = RunFolder(target, "stop", {"kernel": {"file": str(lk.source), "sha256": file_digest(lk.source)},
                                    "config": cfg.model_dump()}, overwrite=overwrite)
    rf.open()
    d = rep.to_dict()
    d["warm_start"] = "f_PT(X) from the file" if lk.outputs is not None else "none (the file has no outputs): f0 = 0"
    d["targets"] = ("+-1 from the label map (" + " -> -1, ".join(lk.label_map) + " -> +1)"
                    if lk.label_map else "the file's labels")
    for k_, v in d.items():
        typer.echo(f"{k_:14s} {v}")
    d["action"] = act.to_dict()
    units = "targets' units squared" if not lk.label_map else "+-1 targets squared"
    typer.echo(f"\nerror bound    {act.bound_mse:.4g} (mean squared error on these {rep.n} rows, {units}; "
               f"root {act.bound_mse ** 0.5:.3g})\nconstant pred. {act.constant_mse:.4g} (root "
               f"{act.constant_mse ** 0.5:.3g}): predicting the mean target on the same rows\n               "
               + act.note.replace("; ", "\n               "))
    per = f"at batch size {act.batch_size}" if act.batch_size else "full batch (--batch-size N)"
    typer.echo(f"action         {act.command}\n               = {act.epochs:.3g} epochs {per}; T_hat = {rep.t_hat} "
               f"kernel-GD steps of alpha = {rep.step:.3g}, i.e. {act.max_steps} GD steps at lr {act.lr:g} on the mean "
               "squared error" + ("" if not lk.label_map else " (the rule is for squared loss: with cross-entropy "
                                  "treat it as a first guess)"))
    rf.write_json("stop.json", d)
    rf.finish(command="stop")
    typer.echo(f"wrote {target / 'stop.json'}, meta.json")
