"""Stage 3: does the beta ranking predict the measured sample-efficiency ranking? (paper Section 6.3, 7.1)

Sample efficiency of a (model, task), from its learning curve of the scale-free score s(n) (R^2 for
regression, (accuracy - majority) / (1 - majority) for classification), mean over seeds:
- `auc`: the mean of s over the training sizes on a log2 axis (trapezoid; larger = more efficient);
- `n_frac`: the training size (log-interpolated) at which s first reaches `efficiency_fraction` of the
  task's best s (smaller = more efficient; a task never above the baseline ranks last).
Spearman's rho between beta (paper estimator, mean over draws) and each measure, per family and over all
tasks with both, with a one-sided permutation p-value (H1: larger beta, more efficient), exact for <= 8 tasks."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pydantic import Field

from .._results import ResultModel
from . import plots
from .context import Context, slug
from .curves import CurvesResult, TaskCurve
from .options import ModelPlan, RunOptions
from .paper import FAMILIES, PAPER_BETA, PAPER_MEASURED_ORDER, label
from .spectra import SpectraResult
from .tables import RunView, Section, Table

FILES = ("correlations.csv",)


class Options(RunOptions):
    """The settings of stage 3 (part of ReproConfig)."""

    efficiency_fraction: float = Field(0.9, gt=0, lt=1, description="sample efficiency: the training size "
                                       "needed to reach this fraction of the task's best score")
    permutations: int = Field(10000, ge=100, description="permutations for the rank-correlation p-value")


def auc(sizes: list[int], scores: list[float]) -> float:
    """Mean of the score over log2(size) (trapezoid rule)."""
    x, y = np.log2(np.asarray(sizes, dtype=np.float64)), np.asarray(scores, dtype=np.float64)
    if len(x) == 1:
        return float(y[0])
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def n_to_fraction(sizes: list[int], scores: list[float], fraction: float) -> float:
    """Smallest size (log-linear interpolation) where the score reaches `fraction` of its best; inf if best <= 0."""
    s = np.asarray(scores, dtype=np.float64)
    best = float(np.nanmax(s))
    if not math.isfinite(best) or best <= 0:
        return math.inf
    goal = fraction * best
    for i, v in enumerate(s):
        if v >= goal:
            if i == 0:
                return float(sizes[0])
            lo, hi = s[i - 1], v
            w = (goal - lo) / (hi - lo) if hi > lo else 1.0
            return float(2 ** (np.log2(sizes[i - 1]) + w * (np.log2(sizes[i]) - np.log2(sizes[i - 1]))))
    return math.inf


def ranks(x: Sequence[float]) -> np.ndarray:
    """Average ranks (1 = smallest), ties shared; inf allowed."""
    from scipy.stats import rankdata

    out: np.ndarray = rankdata(np.asarray(x, dtype=np.float64))
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: the Pearson correlation of the ranks."""
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def permutation_p(x: Sequence[float], y: Sequence[float], permutations: int = 10000, seed: int = 0) -> dict[str, Any]:
    """One- (rho >= observed) and two-sided (|rho| >= |observed|) permutation p-values of Spearman's rho: exact
    over all orderings for <= 8 values, else Monte Carlo with `permutations` draws from one seeded generator."""
    rho = spearman(x, y)
    n = len(x)
    if n < 3 or not math.isfinite(rho):
        return {"rho": rho, "p_one_sided": float("nan"), "p_two_sided": float("nan"), "exact": False, "n": n}
    rx, ry = ranks(x), ranks(y)
    exact = math.factorial(n) <= 40320
    rng = np.random.default_rng(seed)  # one generator across draws (a new one per draw repeats one permutation)
    perms: Iterable[Sequence[int]] = itertools.permutations(range(n)) if exact else \
        (rng.permutation(n).tolist() for _ in range(permutations))
    ge = abs_ge = total = 0
    for p in perms:
        r = float(np.corrcoef(rx, ry[list(p)])[0, 1])
        ge += r >= rho - 1e-12
        abs_ge += abs(r) >= abs(rho) - 1e-12
        total += 1
    if not exact:  # the observed ordering counts once (Phipson & Smyth 2010)
        ge, abs_ge, total = ge + 1, abs_ge + 1, total + 1
    return {"rho": rho, "p_one_sided": ge / total, "p_two_sided": abs_ge / total, "exact": exact, "n": n}


class Efficiency(ResultModel):
    """Sample efficiency of one (model, task) curve, fine-tuning and kernel GD."""

    model: str
    task: str
    beta: float
    beta_ntkft: float
    auc: float
    n_frac: float
    best_skill: float
    kgd_auc: float | None


class Correlation(ResultModel):
    """Spearman's rho between beta and one efficiency measure over one group of tasks."""

    model: str
    group: str
    measure: str
    estimator: str
    tasks: list[str]
    rho: float
    p_one_sided: float
    p_two_sided: float
    exact: bool


class Agreement(ResultModel):
    """This run's orders against the paper's within one family (or over all six tasks: betas only)."""

    model: str
    family: str
    tasks: list[str]
    rho_beta_vs_paper_beta: float
    rho_measured_vs_paper_measured: float | None
    beta_order: list[str]
    measured_order: list[str]
    paper_order: list[str]


class RankingsResult(ResultModel):
    """Stage 3's result."""

    definition: str
    efficiency: list[Efficiency]
    correlations: list[Correlation]
    orders: dict[str, dict[str, list[str]]]  # model -> {"beta": [...], "measured_auc": [...], ...}
    paper_agreement: list[Agreement]


Result = RankingsResult  # the stage protocol's name (registry.py)


DEFINITION = ("score s(n) = R^2 = 1 - MSE/Var(y_test) for regression, (accuracy - majority)/(1 - majority) for "
              "classification, mean over seeds; auc = mean of s over log2(n) (larger = more sample-efficient); "
              "n_frac = training size at which s first reaches {f:g} x its best (smaller = more efficient)")


def _skill_curve(c: TaskCurve) -> tuple[list[int], list[float]]:
    return c.sizes, c.metrics["skill"]


def _kgd_skill(c: TaskCurve, var_or_major: float | None) -> list[float] | None:
    if not c.kgd_sizes:
        return None
    if c.type == "regression":
        return [1 - v for v in c.kgd["nmse"]]
    return None if var_or_major is None else [(a - var_or_major) / (1 - var_or_major) for a in c.kgd["accuracy"]]


def run(ctx: Context, view: RunView) -> RankingsResult:
    """Efficiency per (model, task), the correlations, and the comparison with the paper's rankings."""
    cfg = ctx.options(Options)
    spectra, curves = view.need(SpectraResult), view.need(CurvesResult)
    key = ctx.stage_key("rankings", {"efficiency_fraction": cfg.efficiency_fraction,
                                     "permutations": cfg.permutations}, upstream=["spectra", "curves"])
    rf = ctx.open_stage("rankings", key, derived=True)
    res = compute(cfg.models, spectra, curves, cfg.efficiency_fraction, cfg.permutations)
    rf.write_json("rankings.json", res.to_dict())
    rf.write_text("correlations.csv", correlations_csv(res))
    rf.finish(stage="rankings")
    return res


def compute(models: Sequence[ModelPlan], spectra: SpectraResult, curves: CurvesResult, fraction: float,
            permutations: int) -> RankingsResult:
    """The stage's arithmetic, separated from the run folder (cheap: recomputed on every run)."""
    effs: list[Efficiency] = []
    for plan in models:
        for c in curves.curves:
            s = spectra.get(plan.id, c.task)
            if c.model != plan.id or s is None or len(c.sizes) < 2:
                continue
            sizes, sk = _skill_curve(c)
            major = None
            if c.type == "classification":
                cs = [x.baseline.accuracy_majority for x in curves.cells if x.model == plan.id and x.task == c.task
                      and x.baseline.accuracy_majority is not None]
                major = float(np.mean(cs)) if cs else None
            kg = _kgd_skill(c, major)
            effs.append(Efficiency(model=plan.id, task=c.task, beta=s.beta_paper_mean, beta_ntkft=s.beta_ntkft_mean,
                                   auc=auc(sizes, sk), n_frac=n_to_fraction(sizes, sk, fraction),
                                   best_skill=float(np.nanmax(sk)), kgd_auc=auc(c.kgd_sizes, kg) if kg else None))
    corrs: list[Correlation] = []
    orders: dict[str, dict[str, list[str]]] = {}
    agreement: list[Agreement] = []
    for plan in models:
        mine = {e.task: e for e in effs if e.model == plan.id}
        groups = {fam: [t for t in ts if t in mine] for fam, ts in FAMILIES.items()}
        groups["all"] = [t for t in mine]
        for group, tasks in groups.items():
            if len(tasks) < 2:
                continue
            for estimator, bkey in (("paper", "beta"), ("ntkft", "beta_ntkft")):
                b = [getattr(mine[t], bkey) for t in tasks]
                if any(v is None or not math.isfinite(v) for v in b):
                    continue
                for measure, vals in (("auc", [mine[t].auc for t in tasks]),
                                      ("n_frac", [-mine[t].n_frac for t in tasks]),
                                      ("kgd_auc", [mine[t].kgd_auc for t in tasks])):
                    if any(v is None for v in vals):
                        continue
                    p = permutation_p(b, [float(v) for v in vals if v is not None], permutations)
                    corrs.append(Correlation(model=plan.id, group=group, measure=measure, estimator=estimator,
                                             tasks=tasks, rho=p["rho"], p_one_sided=p["p_one_sided"],
                                             p_two_sided=p["p_two_sided"], exact=p["exact"]))
        orders[plan.id] = {
            "beta": sorted(mine, key=lambda t: -mine[t].beta),
            "measured_auc": sorted(mine, key=lambda t: -mine[t].auc),
            "measured_n_frac": sorted(mine, key=lambda t: mine[t].n_frac),
        }
        for fam, paper_order in PAPER_MEASURED_ORDER.items():
            tasks = [t for t in paper_order if t in mine]
            if len(tasks) < 2:
                continue
            paper_rank = [-paper_order.index(t) for t in tasks]
            agreement.append(Agreement(
                model=plan.id, family=fam, tasks=tasks,
                rho_beta_vs_paper_beta=spearman([mine[t].beta for t in tasks], [PAPER_BETA[t][0] for t in tasks]),
                rho_measured_vs_paper_measured=spearman([mine[t].auc for t in tasks], paper_rank),
                beta_order=sorted(tasks, key=lambda t: -mine[t].beta),
                measured_order=sorted(tasks, key=lambda t: -mine[t].auc), paper_order=tasks))
        six = [t for t in PAPER_BETA if t in mine]
        if len(six) >= 3:
            agreement.append(Agreement(
                model=plan.id, family="all", tasks=six,
                rho_beta_vs_paper_beta=spearman([mine[t].beta for t in six], [PAPER_BETA[t][0] for t in six]),
                rho_measured_vs_paper_measured=None, beta_order=sorted(six, key=lambda t: -mine[t].beta),
                measured_order=sorted(six, key=lambda t: -mine[t].auc),
                paper_order=sorted(six, key=lambda t: -PAPER_BETA[t][0])))
    return RankingsResult(definition=DEFINITION.format(f=fraction), efficiency=effs, correlations=corrs,
                          orders=orders, paper_agreement=agreement)


def correlations_csv(res: RankingsResult) -> str:
    """The rank correlations as CSV text (one row per family and measure)."""
    cols = ["model", "group", "measure", "estimator", "rho", "p_one_sided", "p_two_sided", "exact", "tasks"]
    lines = [",".join(cols)]
    for c in res.correlations:
        d = c.to_dict()
        d["tasks"] = " ".join(d["tasks"])
        lines.append(",".join(f"{d[k]:.6g}" if isinstance(d[k], float) else str(d[k]) for k in cols))
    return "\n".join(lines) + "\n"


def section(view: RunView, figs: dict[str, bytes]) -> Section:
    """The report's rankings section: efficiency per task and its rank correlation with beta."""
    sec = Section("Rankings: does beta predict sample efficiency?")
    d = view.of(RankingsResult)
    if d is None:
        sec.text.append("This stage has not run.")
        return sec
    sec.text.append("Sample efficiency: " + d.definition + ". Spearman's rho between beta and each measure "
                    "(for n_frac, -n_frac), one-sided permutation p-value (H1: rho > 0), exact over all orderings. "
                    "With three tasks a family's rho is one of -1, -0.5, 0.5, 1 and the smallest possible p is 1/6.")
    for model in dict.fromkeys(e.model for e in d.efficiency):
        eff = [e for e in d.efficiency if e.model == model]
        t = Table(f"efficiency-{slug(model)}", f"sample efficiency per task, {model}",
                  f"rankings/rankings.json: efficiency[model={model}]",
                  ["task", "beta (paper est.)", "beta", "auc", "n_frac", "best score", "kernel-GD auc"])
        for e in eff:
            t.rows.append([label(e.task), e.beta, e.beta_ntkft, e.auc, e.n_frac, e.best_skill, e.kgd_auc])
        sec.tables.append(t)
        c = Table(f"correlations-{slug(model)}", f"rank correlation of beta with sample efficiency, {model}",
                  f"rankings/rankings.json: correlations[model={model}]",
                  ["group", "beta estimator", "measure", "rho", "p (one-sided)", "p (two-sided)", "tasks"])
        for r in d.correlations:
            if r.model == model:
                c.rows.append([r.group, r.estimator, r.measure, r.rho, r.p_one_sided, r.p_two_sided,
                               " ".join(label(x) for x in r.tasks)])
        sec.tables.append(c)
        name = f"rankings_{slug(model)}.png"
        figs[name] = plots.rankings_figure(eff, f"beta against sample efficiency, {model}")
        sec.figures.append((name, f"beta against the area under the scale-free learning curve, {model}."))
    return sec
