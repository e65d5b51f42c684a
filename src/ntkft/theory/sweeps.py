"""Sweeps of the theory lab: run folders resumable per unit, summaries with fitted slopes, figures.

A unit ((width, seed), (size, draw), ...) is written as units/<name>.json (+ .safetensors) once finished; a rerun
with the same settings skips finished units, reading each back as its typed record (theory/units.py). The resume
key leaves out the lists that only choose units (widths, seeds, sizes), so a sweep can be extended with more widths
or seeds and only the new units run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from .._runs import RunFolder
from ..spectrum import paper_beta, rate_exponent, window_fit
from .arithmetic import RANKS, arithmetic_tasks, arithmetic_unit
from .config import UNIT_FREE, ArithmeticConfig, LabConfig, SampleSweepConfig, WidthSweepConfig
from .fits import loglog_slope
from .lab import LabData, build_data, finetune, pretrain, student, width_unit
from .plots import Panel, lines, scaling_panels, spectrum
from .results import (
    ArithDesign,
    ArithFit,
    ArithmeticSummary,
    MeanSd,
    SampleBeta,
    SampleFit,
    SampleSize,
    SampleSummary,
    TaskFacts,
    WidthFit,
    WidthStats,
    WidthSummary,
)
from .tasks import TargetData, fingerprint, labelled, sequences
from .units import ArithDesignMeasures, ArithmeticUnit, PretrainUnit, SampleUnit, UnitRecord, WidthUnit

U = TypeVar("U", bound=UnitRecord)
Tensors = dict[str, torch.Tensor]  # a unit's tensors (units/<name>.safetensors)

LAB_VERSION = 1  # bump when a unit's computation changes, so old units are not resumed


def run_key(cfg: LabConfig, data: LabData, kind: str) -> dict[str, Any]:
    """Every config field that decides a unit's result + the data fingerprint + the lab version."""
    fields = {k: v for k, v in cfg.model_dump().items() if k not in UNIT_FREE}
    t = data.target
    return {"kind": kind, "lab_version": LAB_VERSION, "config": fields,
            "data": fingerprint(data.source, t.train, t.val, t.test)}


def run_units(rf: RunFolder, record: type[U], units: Sequence[tuple[str, Callable[[], tuple[U, Tensors]]]],
              progress: bool = True, desc: str = "units") -> dict[str, tuple[U, Tensors]]:
    """Run (or load and validate as `record`) every named unit; each finished unit is on disk before the next starts."""
    out: dict[str, tuple[U, Tensors]] = {}
    bar = tqdm(units, desc=desc, disable=not progress, unit="unit")
    for name, fn in bar:
        bar.set_postfix_str(name)
        js, st = rf.root / "units" / f"{name}.json", rf.root / "units" / f"{name}.safetensors"
        if js.is_file():
            from safetensors.torch import load_file

            out[name] = (record.read(js), load_file(st) if st.is_file() else {})
            continue
        t0 = time.time()
        info, tensors = fn()
        info.seconds = round(time.time() - t0, 2)
        if tensors:
            rf.save_tensors(f"units/{name}.safetensors", tensors)
        rf.write_json(f"units/{name}.json", info.to_dict())  # written last: its presence marks the unit finished
        out[name] = (info, tensors)
    return out


def _get(unit: UnitRecord, path: str) -> Any:
    """A unit record's value at a dotted path of its JSON fields ('err_t_hat.net')."""
    got: Any = unit
    for k in path.split("."):
        got = getattr(got, k)
    return got


def spread(kernels: list[torch.Tensor]) -> float:
    """Relative spread over seeds: sqrt(mean_s ||K_s - Kbar||_F^2 * S/(S-1)) / ||Kbar||_F."""
    ks = torch.stack([k.double() for k in kernels])
    mean = ks.mean(0)
    var = ((ks - mean) ** 2).sum((1, 2)).mean() * len(kernels) / (len(kernels) - 1)
    return float(var.sqrt() / torch.linalg.norm(mean))


# quantity -> (label, predicted log-log slope in n)
WIDTH_LAWS = {
    "theta_dist": ("||theta_PT - theta_0||_2 (B.3 step 1)", -0.5),
    "kernel_init_to_pt_rel": ("||K_0 - K_PT||_F / ||K_PT||_F (eq 40)", -0.5),
    "drift_sup_rel": ("sup_t ||K_PT - K_t||_F / ||K_PT||_F (eq 17/99)", -0.5),
    "lin_sup": ("sup_t RMS(f_t - f_lin,t) on test (Lemma 1)", -0.5),
    "taylor_rms": ("RMS Taylor remainder at T_max (Lemma 1)", -0.5),
    "err_t_hat.diff_rms": ("RMS(f - f_lin) at T_hat", -0.5),
    "err_holdout.diff_rms": ("RMS(f - f_lin) at hold-out stop", -0.5),
    "err_oracle.diff_rms": ("RMS(f - f_lin) at oracle stop", -0.5),
    "err_t_hat.gap": ("|MSE_net - MSE_lin| at T_hat", -0.5),
    "err_t_hat.net": ("test MSE at T_hat (-> kernel limit)", 0.0),
    "err_holdout.net": ("test MSE at hold-out stop", 0.0),
    "err_oracle.net": ("test MSE at oracle stop", 0.0),
}


def summarise_width(cfg: WidthSweepConfig, results: dict[str, tuple[WidthUnit, Tensors]]) -> WidthSummary:
    """Per-width means and sds, the eNTK spread over seeds, and log-log slopes (all widths and n >= fit_min_width)."""
    infos = [r[0] for r in results.values()]
    widths = sorted({i.width for i in infos})
    per_width: dict[int, WidthStats] = {}
    for w in widths:
        rows = [i for i in infos if i.width == w]
        stats: dict[str, Any] = {}
        for q in list(WIDTH_LAWS) + ["lambda_1", "drift_sup_abs", "err_t_hat.lin", "err_holdout.lin", "err_oracle.lin",
                                     "pt_test_mse", "times.t_hat", "times.holdout", "times.oracle", "times.t_hat_est"]:
            v = np.array([_get(i, q) for i in rows], dtype=float)
            stats[q] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
        ks = [r[1]["K0"] for r in results.values() if r[0].width == w and "K0" in r[1]]
        kp = [r[1]["K_PT"] for r in results.values() if r[0].width == w and "K_PT" in r[1]]
        stats["k0_spread"] = spread(ks) if len(ks) > 1 else None
        stats["kpt_spread"] = spread(kp) if len(kp) > 1 else None
        stats["seeds"] = len(rows)
        stats["step_ok"] = all(i.step_ok for i in rows)
        per_width[w] = WidthStats.from_dict(stats, f"width {w}")
    fits: dict[str, WidthFit] = {}
    for q, (label, pred) in WIDTH_LAWS.items():
        x = [i.width for i in infos]
        y = [_get(i, q) for i in infos]
        fits[q] = WidthFit(label=label, all=loglog_slope(x, y, predicted=pred),
                           large=loglog_slope(x, y, predicted=pred, x_min=cfg.fit_min_width))
    for q, label in (("k0_spread", "relative spread of K_0 over seeds (infinite-width limit)"),
                     ("kpt_spread", "relative spread of K_PT over seeds")):
        xs = [w for w in widths if getattr(per_width[w], q) is not None]
        ys = [getattr(per_width[w], q) for w in xs]
        fits[q] = WidthFit(label=label, all=loglog_slope(xs, ys, predicted=-0.5),
                           large=loglog_slope(xs, ys, predicted=-0.5, x_min=cfg.fit_min_width))
    return WidthSummary(widths=widths, per_width={str(w): s for w, s in per_width.items()}, fits=fits)


def width_figures(rf: RunFolder, summary: WidthSummary, results: dict[str, tuple[WidthUnit, Tensors]]) -> list[str]:
    """scaling.png (log-log panels with fitted and predicted slopes) and errors.png (test error vs width)."""
    infos = [r[0] for r in results.values()]
    panels = []
    for q in ["theta_dist", "kernel_init_to_pt_rel", "drift_sup_rel", "lin_sup", "taylor_rms", "err_t_hat.diff_rms",
              "err_oracle.diff_rms", "err_t_hat.gap"]:
        f = summary.fits[q]
        panels.append(Panel(f.label, [i.width for i in infos], [_get(i, q) for i in infos], f.all, -0.5))
    ws, pw = summary.widths, summary.per_width
    sp = [(w, pw[str(w)].k0_spread) for w in ws if pw[str(w)].k0_spread]
    if sp:
        k0 = summary.fits["k0_spread"]
        panels.append(Panel(k0.label, [a for a, _ in sp], [b or 0.0 for _, b in sp], k0.all, -0.5))
    scaling_panels(panels, rf.path("scaling.png"), title="Reference transformer: width scaling (dotted: slope -1/2)")
    series: dict[str, tuple[Any, ...]] = {}
    for i, (rule, name) in enumerate((("t_hat", "T_hat (RWY)"), ("holdout", "hold-out"), ("oracle", "oracle"))):
        for kind in ("net", "lin"):
            q = f"err_{rule}.{kind}"
            series[f"{name}, {'network' if kind == 'net' else 'linearised'}"] = (
                [pw[str(w)].q(q).mean for w in ws], [pw[str(w)].q(q).sd for w in ws], f"C{i}", kind == "lin")
    lines(ws, series, rf.path("errors.png"), "width n", "test MSE vs f_tgt",
          "Early-stopped test error: network vs its linearisation")
    return ["scaling.png", "errors.png"]


def width_sweep(cfg: WidthSweepConfig, out: str | Path, overwrite: bool = False, progress: bool = True,
                figures: bool = True) -> WidthSummary:
    """Pretrain + fine-tune per (width, seed), then summary.json, units.csv and figures in `out`."""
    data = build_data(cfg)
    rf = RunFolder(out, "theory-width-sweep", run_key(cfg, data, "width"), overwrite)
    rf.open()
    rf.write_json("config.json", cfg.model_dump())
    units = [(f"w{w:05d}_s{s:03d}", (lambda w=w, s=s: width_unit(cfg, data, w, s)))
             for w in cfg.widths for s in range(cfg.seeds)]
    results = run_units(rf, WidthUnit, units, progress, "width sweep")
    summary = summarise_width(cfg, results)
    summary.task = TaskFacts(task_corr=data.task_corr, target_var=float(data.target.test.f.var()))
    rf.write_json("summary.json", summary.to_dict())
    rf.write_text("units.csv", _csv([r[0] for r in results.values()], ["width", "seed", "seconds"] + list(WIDTH_LAWS)
                                    + ["lambda_1", "times.t_hat", "times.holdout", "times.oracle"]))
    if figures:
        width_figures(rf, summary, results)
    rf.finish(command="theory width-sweep")
    return summary


def _csv(rows: Sequence[UnitRecord], cols: list[str]) -> str:
    lines_ = [",".join(cols)]
    for r in rows:
        lines_.append(",".join(f"{_get(r, c):.6g}" if isinstance(_get(r, c), float) else str(_get(r, c)) for c in cols))
    return "\n".join(lines_) + "\n"


# ---------------------------------------------------------------------------------------------- sample-size sweep


def _pretrain_unit(cfg: LabConfig, data: LabData, width: int, seed: int) -> tuple[PretrainUnit, Tensors]:
    model, info, _ = pretrain(cfg, data, width, seed)
    return PretrainUnit(**dict(info)), {n: p.detach().clone() for n, p in model.named_parameters()}


def sample_unit(cfg: SampleSweepConfig, data: LabData, theta_pt: dict[str, torch.Tensor], size: int,
                draw: int) -> tuple[SampleUnit, Tensors]:
    """Fine-tune the pretrained model on `size` fresh target samples (draw `draw`); errors at the three stops."""
    gen = torch.Generator().manual_seed(1_000_003 * (cfg.data_seed + 1) + 7919 * size + draw)
    ids = sequences(size, cfg.seq_len, cfg.vocab, "all", gen)
    train = labelled(data.target_teacher, ids, cfg.noise, gen)
    model = student(cfg, cfg.width, 0, data.embedding)
    model.load_state_dict(theta_pt, strict=False)
    ft, tensors = finetune(cfg, model, TargetData(train, data.target.val, data.target.test))
    lams = tensors["eigenvalues"].numpy()
    unit = SampleUnit(**dict(ft), size=size, draw=draw, beta_window=window_fit(lams), beta_paper=paper_beta(lams))
    return unit, {"eigenvalues": tensors["eigenvalues"]}


SAMPLE_RULES = {"t_hat": "T_hat (RWY)", "holdout": "hold-out", "oracle": "oracle"}


def summarise_sample(cfg: SampleSweepConfig, results: dict[str, tuple[SampleUnit, Tensors]]) -> SampleSummary:
    """Error against N_2 per stopping rule, slopes with CIs, and the slope predicted from beta (eq 30)."""
    infos = [r[0] for r in results.values()]
    sizes = sorted({i.size for i in infos})
    top = [i for i in infos if i.size == sizes[-1]]
    betas = np.array([i.beta_window.beta for i in top])
    beta = float(betas.mean())
    pred = -rate_exponent(beta) if beta > 0 else None
    per_size: dict[str, dict[str, Any]] = {}
    for n in sizes:
        rows = [i for i in infos if i.size == n]
        per_size[str(n)] = {f"err_{r}.{k}": _ms([_get(i, f"err_{r}.{k}") for i in rows])
                            for r in SAMPLE_RULES for k in ("net", "lin")}
        per_size[str(n)]["times"] = {r: _ms([_get(i, f"times.{r}") for i in rows]) for r in SAMPLE_RULES}
        per_size[str(n)]["t_hat_capped"] = sum(i.t_hat_capped for i in rows)
        per_size[str(n)]["beta_window"] = _ms([i.beta_window.beta for i in rows])
    fits: dict[str, Any] = {}
    for r in SAMPLE_RULES:
        for k in ("net", "lin"):
            x, y = [i.size for i in infos], [_get(i, f"err_{r}.{k}") for i in infos]
            fit, half = loglog_slope(x, y, predicted=pred), loglog_slope(x, y, predicted=-0.5)
            fits[f"{r}.{k}"] = SampleFit(**fit.to_dict(), vs_minus_half=half.verdict) if fit and half else None
    return SampleSummary(
        width=cfg.width, sizes=sizes, predicted_slope=pred, fits=fits,
        per_size={n: SampleSize.from_dict(v, f"size {n}") for n, v in per_size.items()},
        beta=SampleBeta(window_mean=beta, window_sd=float(betas.std(ddof=1)) if len(betas) > 1 else 0.0,
                        paper_mean=float(np.mean([i.beta_paper.beta for i in top])), n=sizes[-1]))


def _ms(v: Sequence[float]) -> MeanSd:
    """Mean and sd (ddof 1) over the finite values (over all when none is finite)."""
    a = np.asarray(v, dtype=float)
    a = a[np.isfinite(a)] if np.isfinite(a).any() else a
    return MeanSd(mean=float(a.mean()), sd=float(a.std(ddof=1)) if len(a) > 1 else 0.0)


def sample_figures(rf: RunFolder, summary: SampleSummary, results: dict[str, tuple[SampleUnit, Tensors]]) -> None:
    """Figures of the sample-size sweep (error against N with fitted slopes)."""
    infos = [r[0] for r in results.values()]
    panels = []
    for r, label in SAMPLE_RULES.items():
        for k in ("net", "lin"):
            panels.append(Panel(f"test MSE at {label} ({'network' if k == 'net' else 'linearised'})",
                                [i.size for i in infos], [_get(i, f"err_{r}.{k}") for i in infos],
                                summary.fits[f"{r}.{k}"], summary.predicted_slope))
    scaling_panels(panels, rf.path("learning_curves.png"), xlabel="target samples N_2", ncols=2,
                   title=f"Width {summary.width}: error vs N_2 (dotted: -2beta/(2beta+1), beta = "
                         f"{summary.beta.window_mean:.3f})")
    big = [r for r in results.values() if r[0].size == summary.sizes[-1]][0]
    spectrum(big[1]["eigenvalues"].tolist(), big[0].beta_window, rf.path("spectrum.png"),
             f"eNTK spectrum of the pretrained reference model (n = {summary.width}, N = {summary.sizes[-1]})")


def sample_sweep(cfg: SampleSweepConfig, out: str | Path, overwrite: bool = False, progress: bool = True,
                 figures: bool = True) -> SampleSummary:
    """Pretrain once at `width`, then per (size, draw) fine-tune and record the early-stopped errors."""
    data = build_data(cfg)
    rf = RunFolder(out, "theory-sample-sweep", run_key(cfg, data, "sample"), overwrite)
    rf.open()
    rf.write_json("config.json", cfg.model_dump())
    pre = run_units(rf, PretrainUnit, [("pretrain", lambda: _pretrain_unit(cfg, data, cfg.width, 0))], progress,
                    "pretrain")
    theta_pt = pre["pretrain"][1]
    units = [(f"n{n:05d}_d{d:03d}", (lambda n=n, d=d: sample_unit(cfg, data, theta_pt, n, d)))
             for n in cfg.sizes for d in range(cfg.seeds)]
    results = run_units(rf, SampleUnit, units, progress, "sample sweep")
    summary = summarise_sample(cfg, results)
    rf.write_json("summary.json", summary.to_dict())
    if figures:
        sample_figures(rf, summary, results)
    rf.finish(command="theory sample-sweep")
    return summary


# ---------------------------------------------------------------------------------------------- task arithmetic

ARITH_LAWS = {  # (design, quantity) -> (label, predicted slope in n)
    ("orthogonal", "cross_kernel_ratio"): ("orthogonal: ||K_12|| / sqrt(||K_11|| ||K_22||)", -0.5),
    ("orthogonal", "leakage"): ("orthogonal: leakage of tau_j onto task i (linearised)", -0.5),
    ("orthogonal", "leakage_dir1"): ("orthogonal: leakage along K_jj's top eigenvector", -0.5),
    ("orthogonal", "leakage_dir8"): ("orthogonal: leakage along K_jj's eigenvectors 8-15", -0.5),
    ("orthogonal", "disentanglement"): ("orthogonal: disentanglement error xi", -1.0),
    ("orthogonal", "mt_lin_rms"): ("orthogonal: RMS(f_MT - linearised f_MT)", -0.5),
    ("orthogonal", "neg_rel_dev"): ("negation: |gap - 4E[u(f - f_PT)]| / |4E[...]|", -0.5),
    ("overlapping", "cross_kernel_ratio"): ("overlapping: cross-kernel ratio", 0.0),
    ("overlapping", "leakage"): ("overlapping: leakage", 0.0),
    ("overlapping", "disentanglement"): ("overlapping: disentanglement error xi", 0.0),
}


def _design_value(unit: ArithmeticUnit, design: str, q: str) -> float:
    """Quantity `q` of one design: its own field, its leakage band, or the mean over its tasks; NaN when absent."""
    d = unit.designs[design]
    if q.startswith("leakage_dir"):  # bands beyond N_2 are absent
        v = d.band(q)
    elif q in ArithDesignMeasures.model_fields:
        v = getattr(d, q)
    else:
        vals = [getattr(t, q) for t in d.tasks.values() if getattr(t, q) is not None]  # None: a task vector was zero
        v = float(np.mean(vals)) if vals else None
    return float("nan") if v is None else float(v)


def summarise_arithmetic(results: dict[str, tuple[ArithmeticUnit, Tensors]]) -> ArithmeticSummary:
    """Summary table of the task-arithmetic lab over widths and designs."""
    infos = [r[0] for r in results.values()]
    widths = sorted({i.width for i in infos})
    qs = ["cross_kernel_ratio", "leakage", *[f"leakage_dir{r}" for r in RANKS], "disentanglement", "normalised_mse_mean",
          "tau_cosine", "mt_lin_rms", "neg_gap", "neg_gap_lin", "neg_rel_dev", "mse_ft", "mse_mt", "mse_pt", "mse_neg"]
    per_width: dict[str, dict[str, ArithDesign]] = {}
    for w in widths:
        rows = [i for i in infos if i.width == w]
        per_width[str(w)] = {}
        for d in ("orthogonal", "overlapping"):
            gaps = [t.neg_gap for i in rows for t in i.designs[d].tasks.values()]
            per_width[str(w)][d] = ArithDesign.from_dict(
                {q: _ms([_design_value(i, d, q) for i in rows]).to_dict() for q in qs}
                | {"negation_positive": f"{sum(g > 0 for g in gaps)}/{len(gaps)}"}, f"width {w} {d}")
    fits: dict[str, ArithFit] = {}
    for (d, q), (label, pred) in ARITH_LAWS.items():
        fit = loglog_slope([i.width for i in infos], [_design_value(i, d, q) for i in infos], predicted=pred)
        fits[f"{d}.{q}"] = ArithFit(label=label, fit=fit)
    return ArithmeticSummary(widths=widths, per_width=per_width, fits=fits)


def arithmetic_figures(rf: RunFolder, summary: ArithmeticSummary,
                       results: dict[str, tuple[ArithmeticUnit, Tensors]]) -> None:
    """Figures of the task-arithmetic lab."""
    infos = [r[0] for r in results.values()]
    panels = []
    for k, f in summary.fits.items():
        design, q = k.split(".")
        panels.append(Panel(f.label, [i.width for i in infos], [_design_value(i, design, q) for i in infos],
                            f.fit, ARITH_LAWS[(design, q)][1]))
    scaling_panels(panels, rf.path("arithmetic_scaling.png"), title="Task arithmetic vs width")
    ws, pw = summary.widths, summary.per_width
    series: dict[str, tuple[Any, ...]] = {f"{d}: MSE(theta_PT + tau_1 + tau_2) / MSE(theta_FT,t)": (
        [pw[str(w)][d].q("normalised_mse_mean").mean for w in ws],
        [pw[str(w)][d].q("normalised_mse_mean").sd for w in ws]) for d in ("orthogonal", "overlapping")}
    lines(ws, series, rf.path("arithmetic_addition.png"), "width n", "normalised MSE (1 = no interference)",
          "Task addition (Corollary 2)")

    def ms(d: str, q: str) -> tuple[list[float], list[float]]:
        return [pw[str(w)][d].q(q).mean for w in ws], [pw[str(w)][d].q(q).sd for w in ws]

    leak: dict[str, tuple[Any, ...]] = {
        f"orthogonal, eigendirections {r}-{2 * r - 1} of K_jj": (*ms("orthogonal", f"leakage_dir{r}"), f"C{i}", False)
        for i, r in enumerate(RANKS)}
    leak["orthogonal, fine-tuned tau_j"] = (*ms("orthogonal", "leakage"), "k", False)
    leak["overlapping, fine-tuned tau_j"] = (*ms("overlapping", "leakage"), "0.5", True)
    lines(ws, leak, rf.path("arithmetic_leakage.png"), "width n", "||K_ij u_k|| / lambda_k(K_jj)", logy=True,
          title="Leakage of task j's update onto task i (0 under Assumption 5.1)")


def arithmetic_sweep(cfg: ArithmeticConfig, out: str | Path, overwrite: bool = False, progress: bool = True,
                     figures: bool = True) -> ArithmeticSummary:
    """Per (width, seed): pretrain, fine-tune three tasks, measure addition and negation for both designs."""
    data = build_data(cfg)
    tasks = arithmetic_tasks(cfg, data)
    key = run_key(cfg, data, "arithmetic")
    key["tasks"] = fingerprint(*[s for t in tasks.values() for s in (t.train, t.val, t.test)])
    key["arithmetic_version"] = 4
    rf = RunFolder(out, "theory-arithmetic", key, overwrite)
    rf.open()
    rf.write_json("config.json", cfg.model_dump())
    units = [(f"w{w:05d}_s{s:03d}", (lambda w=w, s=s: arithmetic_unit(cfg, data, tasks, w, s)))
             for w in cfg.widths for s in range(cfg.seeds)]
    results = run_units(rf, ArithmeticUnit, units, progress, "arithmetic")
    summary = summarise_arithmetic(results)
    rf.write_json("summary.json", summary.to_dict())
    if figures:
        arithmetic_figures(rf, summary, results)
    rf.finish(command="theory arithmetic")
    return summary
