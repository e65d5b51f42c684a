"""Stage 1: eNTK spectra of f_PT on random training samples (paper Section 7.1, Figures 4-9).

Per model, task and draw: the kernel of `kernel_n` seeded training samples; per model and task: beta by the
paper's estimator (eq 31-32) and by ntkft's default (the scale-matched estimate of `ntkft spectrum`), mean +- sd
over draws, its subsampling interval on the first draw,
power law against exponential decay, and the predicted ranking of sample efficiency (larger beta first)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import NtkftError
from ..kernel import kernel_matrix
from ..spectrum import BetaCI, compare_models, eigenvalues, paper_beta, rate_exponent, subsample_ci
from ..tasks import encode, subsample
from .config import ModelPlan
from .context import Context, load_tensors, read_json, slug

log = logging.getLogger(__name__)


@dataclass
class TaskSpectrum:
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
    r2_paper: float
    decay_model: str
    rate_exponent_paper: float | None
    rate_exponent_ntkft: float | None
    lambda_1: float
    eigenvalues: list[list[float]] = field(default_factory=list)
    window: tuple[int, int] = (0, 0)  # the first draw's ntkft fit window (k_min, k_max)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SpectraResult:
    """Stage 1's result: one TaskSpectrum per (model, task) and the predicted rankings."""

    spectra: list[TaskSpectrum]
    predicted_order: dict[str, list[str]]  # model -> tasks, largest paper-beta first
    predicted_order_ntkft: dict[str, list[str]]
    kernel_params: dict[str, str]

    def to_dict(self) -> dict:
        return {"spectra": [s.to_dict() for s in self.spectra], "predicted_order": self.predicted_order,
                "predicted_order_ntkft": self.predicted_order_ntkft, "kernel_params": self.kernel_params}

    @classmethod
    def from_dict(cls, d: dict) -> SpectraResult:
        """Read back `to_dict()`'s output."""
        return cls([TaskSpectrum(**{**s, "window": tuple(s["window"])}) for s in d["spectra"]], d["predicted_order"],
                   d["predicted_order_ntkft"], d["kernel_params"])

    def get(self, model: str, task: str) -> TaskSpectrum | None:
        return next((s for s in self.spectra if s.model == model and s.task == task), None)


def spectrum_kernel(ctx: Context, plan: ModelPlan, task: str, draw: int) -> torch.Tensor:
    """Unnormalised eNTK of the plan's model (scalar readout, head seed 0; truncated if the plan is) over the
    plan's `kernel_params` (default: all, as the paper) on `kernel_n` training samples drawn with seed `draw`."""
    data = subsample(ctx.task_data(task, "train"), ctx.cfg.kernel_n, seed=draw)
    loaded, readout = ctx.readout(plan)
    x = encode(loaded.tokenizer, loaded.kind, data, max_length=ctx.cfg.max_length)
    return kernel_matrix(readout, x, params=plan.kernel_params, progress=False)


def _inputs(ctx: Context) -> str:
    """Digest of everything the stage's aggregated result depends on (the lists included)."""
    from .._runs import digest

    c = ctx.cfg
    return digest({"models": [m.model_dump() for m in c.models], "tasks": c.spectrum_tasks, "draws": c.draws,
                   "ci_draws": c.ci_draws, "units": ctx.stage_keys.get("spectra"),
                   "fps": {m.name: ctx.model_fingerprint(m.name) for m in c.models},
                   "data": {t: ctx.data_fp(t) for t in c.spectrum_tasks}})


def unit_fp(ctx: Context, plan: ModelPlan, task: str) -> str:
    """Key of one spectrum kernel: weights, data, and the model the plan fine-tunes."""
    return ctx.unit_fp(plan.name, task, layers=plan.layers, params=plan.kernel_params)


def run(ctx: Context) -> SpectraResult:
    """Compute (or read back) every kernel of stage 1, then analyse the spectra."""
    cfg = ctx.cfg
    key = ctx.stage_key("spectra", {"kernel_n": cfg.kernel_n})
    rf = ctx.open_stage("spectra", key)
    inputs = _inputs(ctx)
    got = read_json(rf.root / "spectra.json")
    if rf.complete and got is not None and got.get("inputs") == inputs:
        return SpectraResult.from_dict(got)
    units = [(m, t, d) for m in cfg.models for t in cfg.spectrum_tasks for d in range(cfg.draws)]
    kernels: dict[tuple[str, str, int], torch.Tensor] = {}
    bar = tqdm(units, desc="stage 1: spectra (kernels)", disable=not ctx.progress, unit="kernel")
    for plan, task, draw in bar:
        name = f"kernels/{slug(plan.id)}/{task}-d{draw}.safetensors"
        fp = unit_fp(ctx, plan, task)
        got = load_tensors(rf.root / name, fp)
        if got is None:
            bar.set_postfix_str(f"{plan.id} {task} draw {draw}")
            k = spectrum_kernel(ctx, plan, task, draw)
            rf.save_tensors(name, {"K": k.double()}, {"data": fp})
        else:
            k = got["K"]
        kernels[(plan.id, task, draw)] = k
    bar.close()
    res = analyse(ctx, kernels)
    rf.write_json("spectra.json", res.to_dict() | {"inputs": inputs})
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
        log.warning("%s: no subsampling interval (%s)", what, res.note)
    return res


def analyse(ctx: Context, kernels: dict[tuple[str, str, int], torch.Tensor]) -> SpectraResult:
    """beta per draw by both estimators, mean +- sd, the first draw's subsampling CI, decay model."""
    cfg = ctx.cfg
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
            sd = (lambda a: float(a.std(ddof=1)) if len(a) > 1 else 0.0)  # noqa: E731
            out.append(TaskSpectrum(
                model=plan.id, task=task, n=int(ks[0].shape[0]), draws=len(ks),
                beta_paper=bp.tolist(), beta_ntkft=bw.tolist(),
                beta_paper_mean=float(bp.mean()), beta_paper_sd=sd(bp),
                beta_ntkft_mean=float(bw.mean()), beta_ntkft_sd=sd(bw),
                ci_low=ci_low, ci_high=ci_high, ci_level=ci.level if ci else 0.9,
                r2_paper=float(np.mean([f.r2 for f in paper])),
                decay_model=compare_models(lams[0])["better"],
                rate_exponent_paper=rate_exponent(bp.mean()) if bp.mean() > 0 else None,
                rate_exponent_ntkft=rate_exponent(bw.mean()) if bw.mean() > 0 else None,
                lambda_1=float(np.mean([lam[0] for lam in lams])),
                eigenvalues=[lam.tolist() for lam in lams], window=(ci.k_min, ci.k_max) if ci else (0, 0)))
    order = {p.id: [s.task for s in sorted((s for s in out if s.model == p.id), key=lambda s: -s.beta_paper_mean)]
             for p in cfg.models}
    order_w = {p.id: [s.task for s in sorted((s for s in out if s.model == p.id),
                                                 key=lambda s: -s.beta_ntkft_mean)] for p in cfg.models}
    return SpectraResult(out, order, order_w, {p.id: p.kernel_params for p in cfg.models})


def beta_csv(res: SpectraResult) -> str:
    """One row per (model, task): both estimators' mean and sd, the interval and the decay model."""
    cols = ["model", "task", "n", "draws", "beta_paper_mean", "beta_paper_sd", "beta_ntkft_mean", "beta_ntkft_sd",
            "ci_low", "ci_high", "r2_paper", "decay_model", "lambda_1"]
    lines = [",".join(cols)]
    for s in res.spectra:
        d = s.to_dict()
        lines.append(",".join(f"{d[c]:.6g}" if isinstance(d[c], float) else str(d[c]) for c in cols))
    return "\n".join(lines) + "\n"
