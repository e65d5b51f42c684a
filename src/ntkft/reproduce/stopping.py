"""Stage 4: the RWY stopping rule's T_hat next to hold-out early stopping and the oracle (docs/theory.md sec. 5).

On each kernel-GD unit of stage 2 (seed s, training size n): T_hat from `stop_report` (R and sigma estimated,
step alpha = 1/lambda_1 of K/N; full-batch kernel GD takes one step per epoch), the hold-out step and the
oracle step on the same closed-form path, and the test error at each. Beside them, the fine-tuning cell of
the same (size, seed): where hold-out early stopping stopped and the step with the best test score
(optimiser steps and epochs; AdamW steps are not kernel-GD steps, so only the epochs and the order compare)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .._results import ResultModel
from ..errors import NtkftError
from ..stopping import stop_report
from ..tasks import get_spec
from . import plots
from .context import Context, load_tensors, slug
from .curves import Cell, CurvesResult, kgd_fp, kgd_name
from .curves import Options as CurveOptions
from .kgd import KgdPath, split_pool, start, t_grid, targets, units
from .options import RunOptions
from .paper import label
from .tables import RunView, Section, Table

FILES = ("stopping.csv",)


class Options(RunOptions):
    """The settings of stage 4 (part of ReproConfig): none of its own; it reads stage 2's kernel-GD settings."""


class StopRow(ResultModel):
    """One (model, task, size, seed): the three kernel-GD stopping steps and the fine-tuning steps."""

    model: str
    task: str
    size: int
    seed: int
    n_train: int
    alpha: float
    t_hat: int | None
    eta_star: float | None
    sigma: float | None
    radius: float | None
    eps_hat: float | None
    t_holdout: int
    t_oracle: int
    mse_t_hat: float | None  # test MSE on the regression targets at each stop
    mse_holdout: float
    mse_oracle: float
    ft_best_step: int | None
    ft_stopped_step: int | None
    ft_oracle_step: int | None
    ft_steps_per_epoch: int | None
    ft_best_epoch: float | None
    ft_oracle_epoch: float | None
    note: str = ""


def rows_for(unit: dict[str, torch.Tensor], model: str, task: str, seed: int, sizes: list[int], val: float,
             t_max: int, cells: list[Cell], center: bool = False) -> list[StopRow]:
    """Every StopRow of one kernel-GD unit (kernel GD from f_PT, or from the constant predictor with `center`)."""
    ttype = get_spec(task).type
    kp, kt = unit["K_pool"].numpy(), unit["K_test_pool"].numpy()
    yp, yt = targets(unit["y_pool"].numpy(), ttype), targets(unit["y_test"].numpy(), ttype)
    ts = t_grid(t_max)
    out = []
    for n in sizes:
        tr, va = split_pool(n, val)
        fp, ft = start(unit, yp, tr, ttype, center)
        path = KgdPath(kp[np.ix_(tr, tr)], yp[tr], fp[tr], *units(yp[tr], ttype))  # MSEs in the targets' units
        val_mse = ((path.predict(kp[np.ix_(va, tr)], fp[va], ts) - yp[va][:, None]) ** 2).mean(0)
        test_mse = ((path.predict(kt[:, tr], ft, ts) - yt[:, None]) ** 2).mean(0)
        i_val, i_or = int(np.argmin(val_mse)), int(np.argmin(test_mse))
        note, rep = "", None
        try:
            rep = stop_report(kp[np.ix_(tr, tr)], path.y_train, fp[tr], step=path.alpha)  # the rule in training units
        except NtkftError as e:
            note = f"RWY rule: {e}"
        mse_hat = None
        if rep is not None:
            mse_hat = float(((path.predict(kt[:, tr], ft, np.array([rep.t_hat]))[:, 0] - yt) ** 2).mean())
        cell = next((c for c in cells if c.model == model and c.task == task and c.size == n
                     and c.seed == seed and not c.tuning and c.ok), None)
        spe = cell.steps_per_epoch if cell else None
        out.append(StopRow(
            model=model, task=task, size=n, seed=seed, n_train=len(tr), alpha=float(path.alpha),
            t_hat=rep.t_hat if rep else None, eta_star=rep.eta_star if rep else None,
            sigma=rep.sigma if rep else None, radius=rep.radius if rep else None, eps_hat=rep.eps_hat if rep else None,
            t_holdout=int(ts[i_val]), t_oracle=int(ts[i_or]), mse_t_hat=mse_hat, mse_holdout=float(test_mse[i_val]),
            mse_oracle=float(test_mse[i_or]), ft_best_step=cell.best_step if cell else None,
            ft_stopped_step=cell.stopped_step if cell else None, ft_oracle_step=cell.oracle_step if cell else None,
            ft_steps_per_epoch=spe,
            ft_best_epoch=cell.best_step / spe if cell and cell.best_step is not None and spe else None,
            ft_oracle_epoch=cell.oracle_step / spe if cell and cell.oracle_step is not None and spe else None,
            note=note))
    return out


class StopSummary(ResultModel):
    """One model's reading: how far T_hat lies from the oracle and what each stop gives away in test MSE."""

    rows: int
    median_log10_t_hat_over_oracle: float
    t_hat_before_oracle: int
    median_excess_mse_t_hat: float
    median_excess_mse_holdout: float


class StoppingResult(ResultModel):
    """Stage 4's result, with a one-line reading per model."""

    rows: list[StopRow]
    summary: dict[str, StopSummary]


Result = StoppingResult  # the stage protocol's name (registry.py)


def summarise(rows: list[StopRow]) -> dict[str, StopSummary]:
    """Per model: how far T_hat is from the oracle (median log10 ratio) and how much test MSE it gives away."""
    out: dict[str, StopSummary] = {}
    for model in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == model and r.t_hat is not None and r.mse_t_hat is not None]
        if not mine:
            continue
        t_hat = [int(r.t_hat or 0) for r in mine]
        ratio = [math.log10(max(t, 1) / max(r.t_oracle, 1)) for t, r in zip(t_hat, mine, strict=True)]
        excess_hat = [float(r.mse_t_hat or 0.0) / r.mse_oracle - 1 for r in mine if r.mse_oracle > 0]
        excess_ho = [r.mse_holdout / r.mse_oracle - 1 for r in mine if r.mse_oracle > 0]
        out[model] = StopSummary(
            rows=len(mine), median_log10_t_hat_over_oracle=float(np.median(ratio)),
            t_hat_before_oracle=int(sum(t < r.t_oracle for t, r in zip(t_hat, mine, strict=True))),
            median_excess_mse_t_hat=float(np.median(excess_hat)), median_excess_mse_holdout=float(np.median(excess_ho)))
    return out


def run(ctx: Context, view: RunView) -> StoppingResult:
    """Read stage 2's kernel-GD units and fine-tuning cells; apply the rule."""
    cfg, curves = ctx.options(CurveOptions), view.need(CurvesResult)
    key = ctx.stage_key("stopping", {}, upstream=["curves"])
    rf = ctx.open_stage("stopping", key, derived=True)
    rows: list[StopRow] = []
    for plan in cfg.models:
        for task in cfg.curve_tasks:
            for seed in range(cfg.kgd_seeds):
                unit = load_tensors(ctx.root / "curves" / kgd_name(plan, task, seed), kgd_fp(ctx, plan, task))
                if unit is not None:
                    rows += rows_for(unit, plan.id, task, seed, cfg.kgd_sizes, cfg.val, cfg.kgd_t_max, curves.cells,
                                     plan.center_output)
    res = StoppingResult(rows=rows, summary=summarise(rows))
    rf.write_json("stopping.json", res.to_dict())
    rf.write_text("stopping.csv", stopping_csv(res))
    rf.finish(stage="stopping")
    return res


def stopping_csv(res: StoppingResult) -> str:
    """The stopping table (RWY, hold-out, oracle) as CSV text."""
    cols = list(StopRow.model_fields)
    lines = [",".join(cols)]
    for r in res.rows:
        d = r.to_dict()
        lines.append(",".join(f"{d[c]:.6g}" if isinstance(d[c], float) else ("" if d[c] is None else
                                                                             str(d[c]).replace(",", ";")) for c in cols))
    return "\n".join(lines) + "\n"


def section(view: RunView, figs: dict[str, bytes]) -> Section:
    """The report's stopping section: T_hat, hold-out and oracle steps per kernel-GD point, and a reading."""
    sec = Section("Stopping: the RWY rule's T_hat, hold-out early stopping and the oracle")
    d = view.of(StoppingResult)
    if d is None or not d.rows:
        sec.text.append("This stage has not run (or stage 2 computed no kernel-GD units).")
        return sec
    sec.text.append("Kernel GD on the eNTK with step alpha = 1/lambda_1 of K/N (one full-batch step = one epoch): "
                    "T_hat from the rule with R = sqrt(r^T G^+ r) and sigma from a pilot kernel-ridge fit (both "
                    "estimated, in standardised units for regression), the hold-out step and the oracle step (best test MSE) "
                    "on the same path, the test MSE "
                    "on the regression targets at each; beside them the fine-tuning cell of the same size and seed: "
                    "its hold-out best step, where it stopped, and the step with the best test score (AdamW steps; "
                    "epochs = steps / ceil(n_train / batch)). Step counts on the kernel path lie on a log grid.")
    for model in dict.fromkeys(r.model for r in d.rows):
        rows = [r for r in d.rows if r.model == model]
        t = Table(f"stopping-{slug(model)}", f"stopping steps, {model}", f"stopping/stopping.json: rows[model={model}]",
                  ["task", "n", "T_hat (steps = epochs)", "eta*", "sigma", "t hold-out", "t oracle", "MSE at T_hat",
                   "MSE hold-out", "MSE oracle", "FT best step", "FT stopped", "FT oracle step", "FT best epoch",
                   "FT oracle epoch"])
        for r in rows:
            t.rows.append([label(r.task), r.size, r.t_hat, r.eta_star, r.sigma, r.t_holdout, r.t_oracle, r.mse_t_hat,
                           r.mse_holdout, r.mse_oracle, r.ft_best_step, r.ft_stopped_step, r.ft_oracle_step,
                           r.ft_best_epoch, r.ft_oracle_epoch])
        sec.tables.append(t)
        s = d.summary.get(model)
        if s:
            sec.text.append(f"{model}: over {s.rows} (task, size) points, T_hat lies a median "
                            f"{s.median_log10_t_hat_over_oracle:+.2f} decades from the oracle step and is earlier in "
                            f"{s.t_hat_before_oracle}; median excess test MSE over the oracle: T_hat "
                            f"{s.median_excess_mse_t_hat:.1%}, hold-out {s.median_excess_mse_holdout:.1%} "
                            "(stopping/stopping.json: summary).")
        name = f"stopping_{slug(model)}.png"
        figs[name] = plots.stopping_figure(rows, f"stopping on the kernel-GD path, {model}")
        sec.figures.append((name, f"T_hat and the hold-out step against the oracle step, {model}."))
    return sec
