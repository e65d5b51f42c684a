"""Tier (a) and the predictors of one variant, all from its input set's eNTK on the pool: beta by both estimators,
eq 30's predicted rate, kernel-target alignment, LogME and H-score on the same model's features, and the
linearised model's exact learning curve (hold-out kernel GD) with its rate and n_half."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ..errors import NtkftError
from ..select.predictors import hscore, kta, logme, predicted_curve
from ..select.stats import RateFit, fit_rate, n_half
from ..spectrum import eigenvalues, paper_beta, subsample_ci
from .config import EfficiencyConfig
from .measures import predicted_rate

log = logging.getLogger(__name__)


def _nan(x: float | None) -> float:
    return math.nan if x is None or not math.isfinite(x) else float(x)


def betas(cfg: EfficiencyConfig, k: np.ndarray) -> dict[str, Any]:
    """The paper's estimator (mean over 3 disjoint draws of `paper_n` pool rows, eq 31-32) and ntkft's
    (scale-matched on the whole pool) with its interval."""
    n = k.shape[0]
    draws = min(3, n // cfg.paper_n)
    rng = np.random.default_rng(0)
    perm = rng.permutation(n)
    paper = [paper_beta(eigenvalues(k[np.ix_(ix, ix)])).beta
             for ix in (perm[i * cfg.paper_n:(i + 1) * cfg.paper_n] for i in range(draws))]
    try:
        ci = subsample_ci(k, draws=cfg.beta_draws, seed=0)
        ours, low, high = ci.beta, _nan(ci.low), _nan(ci.high)
    except NtkftError as e:
        log.warning("no ntkft beta (%s)", e)
        ours, low, high = math.nan, math.nan, math.nan
    return {"paper": float(np.mean(paper)) if paper else math.nan, "paper_draws": [float(b) for b in paper],
            "ntkft": float(ours), "ci": [low, high]}


def linear_unit(cfg: EfficiencyConfig, k: np.ndarray, feats: np.ndarray, y: np.ndarray, classification: bool,
                beta: dict[str, Any]) -> dict[str, Any]:
    """Every kernel- and feature-based number of one variant (y: its targets on the pool rows)."""
    lin = cfg.linear
    labels = (y > 0).astype(np.int64) if classification else y
    curve = predicted_curve(k, labels, lin.sizes, n_subsets=lin.subsets, classification=classification, seed=0,
                            val_frac=lin.val_frac, min_val=lin.min_val, val_outside=True)
    subsets = np.asarray(curve.mean)
    fit = fit_rate(curve.sizes, subsets, n_boot=0)  # c >= 0
    if not curve.mean[-1] < curve.baseline[-1]:  # no better than the constant predictor: no rate (as tier b)
        fit = RateFit(0.0, float(np.mean(subsets)), 0.0)
    base = float(np.mean(curve.baseline))
    b = beta["ntkft"]
    lo, hi = beta["ci"]
    return {"beta": beta, "predicted_rate": predicted_rate(b),
            "predicted_rate_ci": [predicted_rate(lo), predicted_rate(hi)],
            "kta": kta(k, y), "logme": logme(feats, labels, classification=classification),
            "hscore": hscore(feats, labels) if classification else math.nan,
            "kgd_curve": curve.to_dict(), "kgd_rate": fit.r, "kgd_c": fit.c, "kgd_a": fit.a,
            "kgd_n_half": n_half(curve.sizes, subsets, base),
            "kgd_scale": 1.0 if classification else float(np.var(y)) or 1.0}  # MSE -> MSE / Var(y), as tier (b)
