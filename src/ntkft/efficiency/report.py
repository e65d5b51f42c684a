"""The experiment's aggregate: summary.json (issue 27's schema), tasks.csv, three figures and README.md with the
verdict first. Everything here is arithmetic on the units' JSON; nothing is recomputed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_text, write_json
from .._runs import RunFolder
from ..select.stats import spearman_one_sided, spearman_power
from .config import EfficiencyConfig
from .measures import Measured, curve_matrix, measure, partial_spearman, predicted_rate, verdict
from .summary import Beta, Curve, Interval, Power, PredictorRow, PrimaryTest, Summary, TaskRow
from .variants import Variant

PREDICTORS = {"predicted_rate": "eq 30's 2b/(2b+1), b = ntkft's beta", "predicted_rate_paper": "2b/(2b+1), b = the "
              "paper's estimator", "kta": "kernel-target alignment (centred)", "kgd_rate": "rate of the eNTK's "
              "predicted curve (kernel GD, tier a)", "logme": "LogME on the model's features",
              "hscore": "H-score on the model's features (classification only)"}


def _f(x: Any) -> float:
    return float(x) if x is not None and isinstance(x, (int, float)) and math.isfinite(x) else math.nan


def measured(cfg: EfficiencyConfig, cells: dict[int, list[dict]]) -> Measured | None:
    """Rate and n_half of one variant from its cells (None when fewer than 3 sizes have every seed)."""
    sizes = [s for s in cfg.finetune.sizes if len(cells.get(s, [])) > 0]
    if len(sizes) < 3:
        return None
    errs = curve_matrix({s: [c["errors"] for c in cells[s]] for s in sizes}, sizes)
    seeds = errs.shape[0]
    base = np.array([np.mean([cells[s][i]["baseline_errors"] for s in sizes], axis=0) for i in range(seeds)])
    return measure(sizes, errs, base, n_boot=cfg.bootstrap)


def _rank_test(x: list[float], y: list[float], z: list[float] | None) -> tuple[float, float, float, int]:
    """(rho, one-sided p, partial rho given z, k) over the pairs where all are finite."""
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    zs = np.asarray(z, float) if z is not None else np.zeros_like(xs)
    ok = np.isfinite(xs) & np.isfinite(ys) & np.isfinite(zs)
    k = int(ok.sum())
    if k < 3 or np.ptp(xs[ok]) == 0 or np.ptp(ys[ok]) == 0:
        return math.nan, math.nan, math.nan, k
    rho, p = spearman_one_sided(xs[ok], ys[ok])
    part = partial_spearman(xs[ok], ys[ok], zs[ok]) if z is not None and np.ptp(zs[ok]) > 0 else math.nan
    return float(rho), float(p), part, k


def aggregate(cfg: EfficiencyConfig, variants: dict[str, Variant], linear: dict[str, dict],
              cells: dict[str, dict[int, list[dict]]], timings: dict[str, Any]) -> Summary:
    """The summary across variants: measures, the primary test, the competing predictors, the verdict."""
    rows: list[TaskRow] = []
    meas: dict[str, Measured | None] = {}
    for name, v in variants.items():
        lin = linear[name]
        m = meas[name] = measured(cfg, cells[name])
        kc, sc = lin["kgd_curve"], float(lin.get("kgd_scale", 1.0))
        b = lin["beta"]
        rows.append(TaskRow(
            name=name, family=v.family, control_of=v.parent if v.control is not None else None,
            beta=Beta(paper=_f(b["paper"]), ntkft=_f(b["ntkft"]), ci=[_f(c) for c in b["ci"]]),
            kta=_f(lin["kta"]), rate=Interval(value=m.rate if m else None, ci=list(m.rate_ci) if m else [None, None]),
            n_half=Interval(value=m.n_half if m else None, ci=list(m.n_half_ci) if m else [None, None]),
            predicted_rate=_f(lin["predicted_rate"]), kgd_rate=_f(lin["kgd_rate"]), kgd_n_half=_f(lin["kgd_n_half"]),
            logme=_f(lin["logme"]), hscore=_f(lin["hscore"]), n_test=len(v.y_test),
            curve=Curve(sizes=m.sizes, error=m.error, se=m.se, baseline=m.baseline) if m else None,
            kgd_curve=Curve(sizes=kc["sizes"], error=[e / sc for e in kc["mean"]],
                            baseline=float(np.mean(kc["baseline"])) / sc)))
    rate = [_f(r.rate.value) for r in rows]
    neg_nh = [-_f(r.n_half.value) for r in rows]
    pr = [_f(r.predicted_rate) for r in rows]
    values = {"predicted_rate": pr, "predicted_rate_paper": [predicted_rate(_f(r.beta.paper)) for r in rows],
              "kta": [_f(r.kta) for r in rows], "kgd_rate": [_f(r.kgd_rate) for r in rows],
              "logme": [_f(r.logme) for r in rows], "hscore": [_f(r.hscore) for r in rows]}
    t = cfg.test
    rho, p, _, k = _rank_test(pr, rate, None)
    power = {f"{r:g}": spearman_power(max(k, 2), r, alpha=t.alpha, n_sim=t.power_sims) for r in (0.5, 0.7, 0.8)}
    primary = PrimaryTest(predictor=t.predictor, measure=t.measure, rho=rho, p=p, power=Power(**power), k=k,
                          alpha=t.alpha)
    preds = []
    for measure_name, target in (("rate", rate), ("-n_half", neg_nh)):
        for pname, x in values.items():
            r_, p_, part, _ = _rank_test(x, target, pr if pname != "predicted_rate" else None)
            preds.append(PredictorRow(name=pname, rho=r_, p=p_, partial_rho=part, measure=measure_name))
    controls = []
    for r in rows:
        if r.control_of is None:
            continue
        par = next(x for x in rows if x.name == r.control_of)
        controls.append({"control": r.name, "parent": par.name, "kind": variants[r.name].control.kind,  # type: ignore[union-attr]
                         "rate": [r.rate.value, par.rate.value], "rate_ci": [r.rate.ci, par.rate.ci],
                         "n_half": [r.n_half.value, par.n_half.value], "n_half_ci": [r.n_half.ci, par.n_half.ci],
                         "kgd_rate": [r.kgd_rate, par.kgd_rate],
                         "rate_differs": _disjoint(r.rate.ci, par.rate.ci),
                         "n_half_differs": _disjoint(r.n_half.ci, par.n_half.ci)})
    n_planned = len(variants)
    verdict_ = verdict(p, power["0.7"], t.alpha, t.power_needed, k, k_needed=n_planned)
    cell_cpu = sum(c.get("cpu_seconds", 0.0) for per in cells.values() for cs in per.values() for c in cs)
    return Summary(tasks=rows, primary_test=primary, predictors=preds, verdict=verdict_, controls=controls,
                   config=cfg.model_dump(), timings=timings | {"cpu_seconds_all_cells": cell_cpu})


def _disjoint(a: list[Any], b: list[Any]) -> bool | None:
    a2, b2 = [_f(x) for x in a], [_f(x) for x in b]
    if not all(math.isfinite(x) for x in a2 + b2):
        return None
    return a2[1] < b2[0] or b2[1] < a2[0]


# ---------------------------------------------------------------- files


def tasks_csv(s: Summary) -> str:
    """tasks.csv: one row per task variant with its betas, rates, n_half and competing predictors."""
    cols = ["name", "family", "control_of", "beta_paper", "beta_ntkft", "beta_low", "beta_high", "predicted_rate",
            "rate", "rate_low", "rate_high", "n_half", "n_half_low", "n_half_high", "kgd_rate", "kgd_n_half", "kta",
            "logme", "hscore", "n_test"]
    lines = [",".join(cols)]
    for r in s.tasks:
        vals = [r.name, r.family, r.control_of or "", r.beta.paper, r.beta.ntkft, *r.beta.ci, r.predicted_rate,
                r.rate.value, *r.rate.ci, r.n_half.value, *r.n_half.ci, r.kgd_rate, r.kgd_n_half, r.kta, r.logme,
                r.hscore, r.n_test]
        lines.append(",".join("" if x is None or (isinstance(x, float) and not math.isfinite(x))
                              else f"{x:.5g}" if isinstance(x, float) else str(x) for x in vals))
    return "\n".join(lines) + "\n"


def figures(s: Summary, folder: Path) -> list[str]:
    """beta vs measured rate (both intervals), predicted vs measured curves, the same-input controls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for r in s.tasks:
        x, y = _f(r.predicted_rate), _f(r.rate.value)
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        b = r.beta.ci
        xlo = predicted_rate(_f(b[0])) if b[0] is not None else x
        xhi = predicted_rate(_f(b[1])) if b[1] is not None else x
        ylo, yhi = _f(r.rate.ci[0]), _f(r.rate.ci[1])
        ax.errorbar([x], [y], xerr=[[max(x - xlo, 0) if math.isfinite(xlo) else 0], [max(xhi - x, 0) if
                                                                                      math.isfinite(xhi) else 0]],
                    yerr=[[max(y - ylo, 0) if math.isfinite(ylo) else 0], [max(yhi - y, 0) if math.isfinite(yhi)
                                                                            else 0]],
                    fmt="s" if r.control_of else "o", color="tab:red" if r.control_of else "tab:blue", capsize=3)
        ax.annotate(r.name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    pt = s.primary_test
    ax.set(xlabel="predicted rate 2b/(2b+1) (ntkft beta, 90% interval)", ylabel="measured rate r (90% bootstrap)",
           )
    ax.set_title(f"Spearman rho {_f(pt.rho):+.2f}, one-sided p {_f(pt.p):.3f} (k={pt.k}); red = same-input control",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "beta_vs_rate.png", dpi=90)
    plt.close(fig)
    names.append("beta_vs_rate.png")
    n = len(s.tasks)
    cols = 4
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(3.2 * cols, 2.5 * math.ceil(n / cols)), squeeze=False)
    for ax, r in zip(axes.flat, s.tasks, strict=False):
        if r.curve is not None:
            ax.errorbar(r.curve.sizes, r.curve.error, yerr=[_f(e) for e in r.curve.se], marker="o",
                        label="fine-tuned (test)")
            ax.axhline(_f(r.curve.baseline), color="tab:blue", ls=":", lw=1)
        if r.kgd_curve is not None:
            ax.plot(r.kgd_curve.sizes, r.kgd_curve.error, marker=".", color="tab:orange", label="eNTK kernel GD (pool)")
            ax.axhline(_f(r.kgd_curve.baseline), color="tab:orange", ls=":", lw=1)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{r.name}: r {_f(r.rate.value):.2f}, pred {_f(r.predicted_rate):.2f}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.supxlabel("training rows n (dotted: constant predictor)", fontsize=8)
    fig.supylabel("test error (0-1, or MSE / Var)", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "curves.png", dpi=80)
    plt.close(fig)
    names.append("curves.png")
    if s.controls:
        fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(s.controls) + 1.5))
        for i, c in enumerate(s.controls):
            for j, (val, ci) in enumerate(zip(c["n_half"], c["n_half_ci"], strict=True)):
                v = _f(val)
                if math.isfinite(v):
                    lo, hi = _f(ci[0]), _f(ci[1])
                    ax.errorbar([v], [i + 0.15 * (1 - 2 * j)], xerr=[[max(v - lo, 0) if math.isfinite(lo) else 0],
                                                                      [max(hi - v, 0) if math.isfinite(hi) else 0]],
                                fmt="s" if j == 0 else "o", color="tab:red" if j == 0 else "tab:blue", capsize=3)
        ax.set_yticks(range(len(s.controls)), [f"{c['control']} vs {c['parent']}" for c in s.controls], fontsize=7)
        ax.set_xscale("log")
        ax.set(xlabel="n_half (90% bootstrap); red = control, blue = parent (same inputs, same eNTK and beta)")
        fig.tight_layout()
        fig.savefig(folder / "controls.png", dpi=90)
        plt.close(fig)
        names.append("controls.png")
    return names


def _num(x: Any, fmt: str = ".3f") -> str:
    v = _f(x)
    return format(v, fmt) if math.isfinite(v) else "n/a"


def _ci(ci: list[Any], fmt: str = ".2f", value: Any = None) -> str:
    """An interval; marked with a dagger when it excludes its own estimate (an unstable statistic: read with care)."""
    v, lo, hi = _f(value), _f(ci[0]), _f(ci[1])
    mark = " †" if math.isfinite(v) and math.isfinite(lo) and math.isfinite(hi) and not lo <= v <= hi else ""
    return f"[{_num(ci[0], fmt)}, {_num(ci[1], fmt)}]{mark}"


def readme(s: Summary) -> str:
    """The result page: the verdict first, then the test, the figures, the tables and their source files."""
    pt, c = s.primary_test, s.config
    ft, lin = c["finetune"], c["linear"]
    pw = pt.power
    lines = [
        "# Does the eNTK predict fine-tuning sample efficiency? (issue 27)", "",
        f"**Verdict: {s.verdict}.** One-sided exact Spearman between eq 30's predicted rate 2b/(2b+1) and the "
        f"measured rate r over k = {pt.k} task variants: rho = {_num(pt.rho, '+.2f')}, p = {_num(pt.p)} "
        f"(alpha {pt.alpha}); power of this test at true rho 0.5 / 0.7 / 0.8: {pw.p05:.2f} / {pw.p07:.2f} / "
        f"{pw.p08:.2f}.", "",
        "Rule, stated in the config before the run: *supported* if p <= alpha; *not supported* if p > alpha while "
        f"the power at rho = 0.7 is >= {c['test']['power_needed']} with every planned variant measured; otherwise "
        "*inconclusive*.", "",
        "## The test", "",
        f"- Model `{c['model']}`" + (f" cut after block {c['layers']}" if c.get("layers") else "") +
        f", head sigma {c['sigma']}, scalar readout, squared loss, centred start, dropout off; the kernel is the eNTK "
        "of exactly this model (facts in each kernel file's meta, compared with every fine-tuning cell).",
        f"- Kernel pool N = {c['pool']} rows per input set; tier (a) kernel GD with hold-out stopping at sizes "
        f"{lin['sizes']}, {lin['subsets']} subsets each, >= {lin['min_val']} validation rows.",
        f"- Tier (b) full fine-tuning at sizes {ft['sizes']}, {ft['seeds']} seeds (seeds draw the rows; the head "
        f"init is the kernel's), AdamW lr {ft['lr']}, batch {ft['batch_size']}, {ft['epochs']} epochs with at least "
        f"{ft['min_steps']} steps, patience {ft['patience']}, >= {ft['min_val']} validation rows at every size; test "
        f"on up to {c['n_test']} rows (SE in the curve table).",
        "- Measured rate r: least-squares fit of e(n) = c + a n^-r (r <= 4, floor c >= 0) to the mean test error (0-1 error of "
        "the sign, or MSE / Var(y_test)); r = 0 when the largest size does not beat the constant predictor; "
        "n_half: the size closing half the gap between the constant predictor and "
        f"the largest size; 90% intervals from {c['bootstrap']} bootstrap draws over seeds and test rows jointly.",
        "", "## Figures", "",
        "![predicted vs measured rate](figures/beta_vs_rate.png)", "",
        "![learning curves](figures/curves.png)", "",
    ]
    if s.controls:
        lines += ["![same-input controls](figures/controls.png)", ""]
    lines += ["## Variants (source: `tasks.csv`, `summary.json`)", "",
              "| variant | control of | beta (paper) | beta [90%] | predicted rate | measured r [90%] | "
              "n_half [90%] | kernel-GD r | KTA | test rows |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in s.tasks:
        lines.append(f"| {r.name} | {r.control_of or ''} | {_num(r.beta.paper)} | {_num(r.beta.ntkft)} "
                     f"{_ci(r.beta.ci, '.3f')} | {_num(r.predicted_rate)} | {_num(r.rate.value, '.2f')} "
                     f"{_ci(r.rate.ci, '.2f', r.rate.value)} | {_num(r.n_half.value, '.0f')} "
                     f"{_ci(r.n_half.ci, '.0f', r.n_half.value)} | "
                     f"{_num(r.kgd_rate, '.2f')} | {_num(r.kta)} | {r.n_test} |")
    lines += ["", "† the 90% bootstrap interval excludes the point estimate: the statistic jumps between resamples "
              "(a curve that is flat or not monotone over the sizes); n/a: no finite value (n_half when the largest "
              "size does not beat the constant predictor). A rate of 4 is the fit's bound (no curvature to fit).",
              "", "## Competing predictors (one-sided Spearman with the measure; partial rho given the predicted "
              "rate)", "", "| predictor | measure | rho | p | partial rho |", "|---|---|---|---|---|"]
    for pr in s.predictors:
        lines.append(f"| {pr.name}: {PREDICTORS.get(pr.name, '')} | {pr.measure} | {_num(pr.rho, '+.2f')} | "
                     f"{_num(pr.p)} | {_num(pr.partial_rho, '+.2f')} |")
    if s.controls:
        lines += ["", "## Same-input controls", "",
                  "A control has its parent's inputs, so the same eNTK and the same beta: the spectrum predicts the "
                  "same efficiency for both. Where their measured efficiency differs (disjoint 90% intervals), the "
                  "difference is what the spectrum alone cannot explain.", "",
                  "| control | parent | kind | r control / parent | n_half control / parent | differs (r, n_half) |",
                  "|---|---|---|---|---|---|"]
        for ctl in s.controls:
            lines.append(f"| {ctl['control']} | {ctl['parent']} | {ctl['kind']} | {_num(ctl['rate'][0], '.2f')} / "
                         f"{_num(ctl['rate'][1], '.2f')} | {_num(ctl['n_half'][0], '.0f')} / "
                         f"{_num(ctl['n_half'][1], '.0f')} | {ctl['rate_differs']}, {ctl['n_half_differs']} |")
    lines += ["", "## Learning curves (mean test error, SE over test rows; constant predictor)", "",
              "| variant | " + " | ".join(f"n={n}" for n in ft["sizes"]) + " | constant |",
              "|---|" + "---|" * (len(ft["sizes"]) + 1)]
    for r in s.tasks:
        if r.curve is None:
            continue
        cells = {n: f"{_num(e)} ± {_num(se)}" for n, e, se in zip(r.curve.sizes, r.curve.error, r.curve.se,
                                                                  strict=True)}
        lines.append(f"| {r.name} | " + " | ".join(cells.get(n, "") for n in ft["sizes"]) +
                     f" | {_num(r.curve.baseline)} |")
    tm = s.timings
    lines += ["", "## Sources and cost", "",
              "- `summary.json` (this page's numbers, issue 27's schema), `tasks.csv` (one row per variant); the run "
              "folder holds every unit (`kernels/`, `linear/`, `cells/`).",
              "- The beta estimators' bias and interval coverage on closed-form kernels and on this run's eNTKs split into "
              "disjoint draws: `estimators.md`.",
              f"- Fine-tuning CPU seconds over all cells: {tm.get('cpu_seconds_all_cells', 0):.0f}; this call "
              f"computed {tm.get('computed')} units and reused {tm.get('reused')}.", ""]
    return "\n".join(lines)


def write_report(s: Summary, rf: RunFolder, docs: str | Path | None) -> None:
    """summary.json, tasks.csv, figures/ and README.md into the run folder, and into `docs` if given."""
    data = s.to_json()
    Summary.model_validate(data)  # what is written reads back
    rf.write_json("summary.json", data)
    rf.write_text("tasks.csv", tasks_csv(s))
    rf.path("figures")
    figures(s, rf.root / "figures")
    rf.write_text("README.md", readme(s))
    if docs is not None:
        d = Path(docs)
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "summary.json", data)
        atomic_write_text(d / "tasks.csv", tasks_csv(s))
        figures(s, d / "figures")
        atomic_write_text(d / "README.md", readme(s))
