"""Stage 1: eNTK spectra of f_PT on random training samples (paper Section 7.1, Figures 4-9).

Per model, task and draw: the kernel of `kernel_n` seeded training samples; per model and task: beta by the
paper's estimator (eq 31-32) and by ntkft's default (the scale-matched estimate of `ntkft spectrum`), mean +- sd
over draws, its interval on the first draw,
power law against exponential decay, and the predicted ranking of sample efficiency (larger beta first)."""

from __future__ import annotations

import logging

import numpy as np
import torch
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from .._results import ResultModel
from ..errors import DataError, NtkftError
from ..kernel import kernel_matrix
from ..spectrum import BetaCI, compare_models, eigenvalues, paper_beta, rate_exponent, subsample_ci
from ..tasks import encode, subsample
from . import plots
from .context import Context, kernel_params, load_tensors, slug
from .options import ModelPlan, RunOptions, TaskList
from .paper import PAPER_BETA, label
from .tables import RunView, Section, Table, fmt

FILES = ("beta.csv", "kernels/")

log = logging.getLogger(__name__)

SPECTRUM_TASKS = ["semrel", "sts12", "stsb", "amazon_polarity", "mrpc", "rte", "cr", "sst2"]


class Options(RunOptions):
    """The settings of stage 1 (part of ReproConfig)."""

    spectrum_tasks: TaskList = Field(default_factory=lambda: list(SPECTRUM_TASKS), min_length=1,
                                     description="tasks whose eNTK spectrum is measured")
    kernel_n: int = Field(100, ge=8, description="random training samples per spectrum kernel (paper: 100)")
    draws: int = Field(3, ge=1, description="independent draws per task (paper: 3)")
    ci_draws: int = Field(200, ge=10, description="simulated kernels behind the beta interval")


def centred_r2(lams: np.ndarray, beta: float) -> float:
    """R^2 of the paper's fit log(lambda_k / lambda_1) = -2 beta log k (k = 1..N over the positive eigenvalues)
    against the mean of y, the usual centred total; the paper's own R^2 uses sum y^2 (no intercept) and is near 1
    for any decreasing spectrum."""
    pos = np.asarray(lams, dtype=np.float64)
    pos = pos[pos > 0]
    y = np.log(pos / pos[0])
    resid = y + 2 * beta * np.log(np.arange(1, len(pos) + 1, dtype=np.float64))
    tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum(resid ** 2)) / tot if tot > 0 else float("nan")


class TaskSpectrum(ResultModel):
    """beta of one model on one task over draws, both estimators side by side."""

    model: str
    task: str
    n: int
    draws: int
    beta_paper: list[float]
    beta_ntkft: list[float]
    beta_paper_mean: float
    beta_paper_sd: float
    beta_ntkft_mean: float
    beta_ntkft_sd: float
    ci_low: float  # the interval of the first draw's ntkft estimate (nan when N is too small for one)
    ci_high: float
    ci_level: float
    r2_paper: float  # the paper's R^2: uncentred (no intercept, sum of y^2 as the total), mean over draws
    r2_paper_centred: float | None = None  # the same fit's R^2 against the mean of y (mean over draws)
    decay_model: str
    rate_exponent_paper: float | None
    rate_exponent_ntkft: float | None
    lambda_1: float
    eigenvalues: list[list[float]] = Field(default_factory=list)
    window: tuple[int, int] = (0, 0)  # the first draw's ntkft fit window (k_min, k_max)

    @model_validator(mode="after")
    def _centred(self) -> TaskSpectrum:
        """A result written before the centred R^2 was recorded gets it from its own eigenvalues and fits."""
        if self.r2_paper_centred is None and len(self.eigenvalues) == len(self.beta_paper) > 0:
            self.r2_paper_centred = float(np.mean([centred_r2(np.asarray(lam), b)
                                                   for lam, b in zip(self.eigenvalues, self.beta_paper, strict=True)]))
        return self


class SpectraResult(ResultModel):
    """Stage 1's result: one TaskSpectrum per (model, task) and the predicted rankings."""

    spectra: list[TaskSpectrum]
    predicted_order: dict[str, list[str]]  # model -> tasks, largest paper-beta first
    predicted_order_ntkft: dict[str, list[str]]
    kernel_params: dict[str, str]
    head_sigma: dict[str, float] | None = None  # model -> the head init scale of its kernels (None: before it was
    # recorded, when every spectrum kernel used sigma 1 whatever the plan fine-tuned with)
    inputs: str | None = None  # digest of everything the result depends on (the stage's resume check)

    def get(self, model: str, task: str) -> TaskSpectrum | None:
        """The spectrum of one (model, task), if measured."""
        return next((s for s in self.spectra if s.model == model and s.task == task), None)


Result = SpectraResult  # the stage protocol's name (registry.py)


def spectrum_kernel(ctx: Context, plan: ModelPlan, task: str, draw: int) -> torch.Tensor:
    """Unnormalised eNTK of the model the plan fine-tunes (`Context.entk_model`: its truncation, head sigma, the
    parameters it trains; scalar readout, head seed 0) on `kernel_n` training samples drawn with seed `draw`."""
    data = subsample(ctx.task_data(task, "train"), ctx.options(Options).kernel_n, seed=draw)
    loaded, readout, params = ctx.entk_model(plan)
    x = encode(loaded.tokenizer, loaded.kind, data, max_length=ctx.cfg.max_length)
    return kernel_matrix(readout, x, params=params, progress=False)


def _inputs(ctx: Context) -> str:
    """Digest of everything the stage's aggregated result depends on (the lists included)."""
    from .._runs import digest

    c = ctx.options(Options)
    return digest({"models": [m.model_dump() for m in c.models], "tasks": c.spectrum_tasks, "draws": c.draws,
                   "ci_draws": c.ci_draws, "units": ctx.stage_keys.get("spectra"),
                   "fps": {m.name: ctx.model_fingerprint(m.name) for m in c.models},
                   "data": {t: ctx.data_fp(t) for t in c.spectrum_tasks}})


def unit_fp(ctx: Context, plan: ModelPlan, task: str) -> str:
    """Key of one spectrum kernel: weights, data, and the model the plan fine-tunes. A kernel computed at
    another head sigma (before the kernels followed the plan's sigma, all were sigma 1) has another key and is
    recomputed; a sigma-1 plan keeps the key it always had."""
    head = {} if plan.sigma == 1.0 else {"sigma": plan.sigma}
    return ctx.unit_fp(plan.name, task, layers=plan.layers, params=kernel_params(plan), **head)


def run(ctx: Context, view: RunView) -> Result:
    """Compute (or read back) every kernel of stage 1, then analyse the spectra."""
    cfg = ctx.options(Options)
    key = ctx.stage_key("spectra", {"kernel_n": cfg.kernel_n})
    rf = ctx.open_stage("spectra", key)
    inputs = _inputs(ctx)
    if rf.complete and (rf.root / "spectra.json").is_file():
        try:
            got = Result.read(rf.root / "spectra.json")
        except DataError:  # written by an older layout: recomputed from the cached kernels
            got = None
        if got is not None and got.inputs == inputs:
            return got
    units = [(m, t, d) for m in cfg.models for t in cfg.spectrum_tasks for d in range(cfg.draws)]
    kernels: dict[tuple[str, str, int], torch.Tensor] = {}
    bar = tqdm(units, desc="stage 1: spectra (kernels)", disable=not ctx.progress, unit="kernel")
    for plan, task, draw in bar:
        name = f"kernels/{slug(plan.id)}/{task}-d{draw}.safetensors"
        fp = unit_fp(ctx, plan, task)
        cached = load_tensors(rf.root / name, fp)
        if cached is None:
            bar.set_postfix_str(f"{plan.id} {task} draw {draw}")
            k = spectrum_kernel(ctx, plan, task, draw)
            rf.save_tensors(name, {"K": k.double()}, {"data": fp})
        else:
            k = cached["K"]
        kernels[(plan.id, task, draw)] = k
    bar.close()
    res = analyse(ctx, kernels)
    res.inputs = inputs
    rf.write_json("spectra.json", res.to_dict())
    rf.write_text("beta.csv", beta_csv(res))
    rf.finish(stage="spectra")
    return res


def _ours(k: torch.Tensor, draws: int, what: str) -> BetaCI | None:
    """ntkft's default beta (scale-matched) with its interval when `draws` > 0; None (logged) when K has too few
    positive eigenvalues for a fit."""
    try:
        res = subsample_ci(k, draws=draws, seed=0)
    except NtkftError as e:
        log.warning("%s: no ntkft beta (%s)", what, e)
        return None
    if draws and (res.low is None or res.high is None):
        log.warning("%s: no beta interval (%s)", what, res.note)
    return res


def analyse(ctx: Context, kernels: dict[tuple[str, str, int], torch.Tensor]) -> Result:
    """beta per draw by both estimators, mean +- sd, the first draw's 90% interval, decay model."""
    cfg = ctx.options(Options)
    out = []
    for plan in cfg.models:
        for task in cfg.spectrum_tasks:
            ks = [kernels[(plan.id, task, d)] for d in range(cfg.draws)]
            lams = [eigenvalues(k) for k in ks]
            paper = [paper_beta(lam) for lam in lams]
            ours = [_ours(k, cfg.ci_draws if d == 0 else 0, f"{plan.id} {task} draw {d}") for d, k in enumerate(ks)]
            bp, bw = np.array([f.beta for f in paper]), np.array([c.beta if c else np.nan for c in ours])
            ci = ours[0]
            ci_low = float("nan") if ci is None or ci.low is None else ci.low
            ci_high = float("nan") if ci is None or ci.high is None else ci.high
            out.append(TaskSpectrum(
                model=plan.id, task=task, n=int(ks[0].shape[0]), draws=len(ks),
                beta_paper=bp.tolist(), beta_ntkft=bw.tolist(),
                beta_paper_mean=float(bp.mean()), beta_paper_sd=_sd(bp),
                beta_ntkft_mean=float(bw.mean()), beta_ntkft_sd=_sd(bw),
                ci_low=ci_low, ci_high=ci_high, ci_level=ci.level if ci else 0.9,
                r2_paper=float(np.mean([f.r2 for f in paper])),
                r2_paper_centred=float(np.mean([centred_r2(lam, f.beta) for lam, f in zip(lams, paper, strict=True)])),
                decay_model=compare_models(lams[0])["better"],
                rate_exponent_paper=rate_exponent(bp.mean()) if bp.mean() > 0 else None,
                rate_exponent_ntkft=rate_exponent(bw.mean()) if bw.mean() > 0 else None,
                lambda_1=float(np.mean([lam[0] for lam in lams])),
                eigenvalues=[lam.tolist() for lam in lams], window=(ci.k_min, ci.k_max) if ci else (0, 0)))
    order = {p.id: [s.task for s in sorted((s for s in out if s.model == p.id), key=lambda s: -s.beta_paper_mean)]
             for p in cfg.models}
    order_w = {p.id: [s.task for s in sorted((s for s in out if s.model == p.id),
                                                 key=lambda s: -s.beta_ntkft_mean)] for p in cfg.models}
    return Result(spectra=out, predicted_order=order, predicted_order_ntkft=order_w,
                  kernel_params={p.id: kernel_params(p) for p in cfg.models},
                  head_sigma={p.id: p.sigma for p in cfg.models})


def _sd(a: np.ndarray) -> float:
    """Sample sd (ddof 1); 0 for one draw."""
    return float(a.std(ddof=1)) if len(a) > 1 else 0.0


def beta_csv(res: Result) -> str:
    """One row per (model, task): both estimators' mean and sd, the interval and the decay model."""
    cols = ["model", "task", "n", "draws", "beta_paper_mean", "beta_paper_sd", "beta_ntkft_mean", "beta_ntkft_sd",
            "ci_low", "ci_high", "r2_paper", "r2_paper_centred", "decay_model", "lambda_1"]
    lines = [",".join(cols)]
    for s in res.spectra:
        d = s.to_dict()
        lines.append(",".join(f"{d[c]:.6g}" if isinstance(d[c], float) else str(d[c]) for c in cols))
    return "\n".join(lines) + "\n"


def section(view: RunView, figs: dict[str, bytes]) -> Section:
    """The report's spectra section: beta per model and task by both estimators, figures, predicted orders."""
    sec = Section("eNTK spectra and the decay rate beta (paper Section 7.1, Figures 4-9)")
    d = view.of(Result)
    if d is None:
        sec.text.append("This stage has not run.")
        return sec
    cfg = view.cfg
    sigmas = d.head_sigma or {}
    sec.text.append(f"eNTK of f_PT (scalar readout, head seed 0) on {cfg.get('kernel_n')} random training samples per "
                    f"task, {cfg.get('draws')} draws. beta by the paper's estimator (least squares of "
                    "log(lambda_k/lambda_1) on log k, k = 1..N, eq 31-32) and by ntkft's default (the scale-matched "
                    "estimate of `ntkft spectrum`: the k-th eigenvalue of K against the matching one of its "
                    "half-subsets, corrected for finite N) with its 90% interval on the first draw. "
                    "Kernel parameters per model: " + ", ".join(f"{m}: {p}" for m, p in d.kernel_params.items()) + ".")
    sec.text.append("R2 (paper) is the paper's uncentred R^2 (fit through the origin, total sum of y^2), near 1 for "
                    "any decreasing spectrum; R2 (centred) is the same fit against the mean of y.")
    if sigmas:
        sec.text.append("Head init scale of each model's kernels (the fine-tuned model's): "
                        + ", ".join(f"{m}: {v:g}" for m, v in sigmas.items()) + ".")
    else:
        wrong = [m for m, p in view.plans().items() if p.get("sigma", 1.0) != 1.0]
        sec.text.append("These kernels were computed before the head scale was recorded, all at sigma 1"
                        + (f"; {', '.join(wrong)} is fine-tuned and run through kernel GD at another sigma, so its "
                           "beta describes another kernel (a rerun recomputes them)" if wrong else "") + ".")
    for model in dict.fromkeys(s.model for s in d.spectra):
        mine = [s for s in d.spectra if s.model == model]
        t = Table(f"beta-{slug(model)}", f"beta per task, {model} (paper: GPT-Neo-1.3B)",
                  f"spectra/spectra.json: spectra[model={model}]",
                  ["task", "paper beta", "paper sd", "beta (paper est.)", "sd", "beta", "sd (beta)",
                   "CI low", "CI high", "R2 (paper est.)", "R2 (centred)", "decay"])
        off = [label(s.task) for s in mine if not (s.ci_low <= s.beta_ntkft[0] <= s.ci_high)]
        if off:
            t.note = f"No interval around the first draw's estimate for {', '.join(off)} (too few samples)."
        for s in mine:
            pb = PAPER_BETA.get(s.task)
            t.rows.append([label(s.task), pb[0] if pb else None, pb[1] if pb else None, s.beta_paper_mean,
                           s.beta_paper_sd, s.beta_ntkft_mean, s.beta_ntkft_sd, s.ci_low, s.ci_high,
                           s.r2_paper, s.r2_paper_centred, s.decay_model])
        sec.tables.append(t)
        name = f"spectra_{slug(model)}.png"
        figs[name] = plots.spectra_figure(mine, f"eNTK eigenvalue decay, {model}")
        sec.figures.append((name, f"Eigenvalues of K/N per task and draw, {model}; dashed: the paper's fit, "
                                  "dotted: ntkft's scale-matched estimate over its window."))
        sec.text.append(f"Predicted order of sample efficiency for {model} (larger beta first): "
                        f"{fmt(d.predicted_order[model])}.")
    return sec
