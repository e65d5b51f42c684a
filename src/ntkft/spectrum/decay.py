"""Eigenvalue decay fits on one spectrum: the rate beta in lambda_k ~ k^(-2 beta), and what it predicts.

These fits read the eigenvalues of one K/N as they are (descriptive); the finite-N corrected estimate with a
confidence interval is `matched.subsample_ci`, which needs the kernel matrix itself."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from ..errors import ConfigError, KernelError
from .eig import FLOOR, Array, eigenvalues
from .result import Result

Estimator = Literal["paper", "window", "matched"]


@dataclass
class DecayFit(Result):
    """One fit of log lambda_k against log k (power law) or k (exponential) on a window of k."""

    beta: float  # power law: slope = -2 beta; exponential: the rate c in lambda_k ~ exp(-c k)
    intercept: float
    r2: float
    k_min: int
    k_max: int
    model: str = "power"
    method: str = "window"
    r2_centred: float | None = None  # the paper fit's R^2 about the mean of log(lambda_k/lambda_1) (its r2 is uncentred)


@dataclass
class DecayComparison(Result):
    """Power law against exponential decay on one window (unweighted R^2 of log lambda for both)."""

    power_r2: float
    exponential_r2: float
    better: str
    power_beta: float
    exponential_rate: float
    k_min: int
    k_max: int


@dataclass
class WindowBeta(Result):
    """The window fit's beta and R^2 on one window (a row of `sensitivity`)."""

    k_min: int
    k_max: int
    beta: float
    r2: float


@dataclass
class DrawsSummary(Result):
    """beta over kernels of independent draws of samples: mean +- sd (as the paper reports)."""

    estimator: str
    betas: list[float] = field(default_factory=list)
    mean: float = float("nan")
    std: float = 0.0


def _positive(lams: ArrayLike) -> Array:
    arr = np.asarray(lams, dtype=np.float64)
    if arr.ndim != 1 or not np.isfinite(arr).all():
        raise KernelError("eigenvalues must be a finite 1-D array")
    out: Array = arr[arr > 0]
    return out


def _wls(x: Array, y: Array, w: Array, intercept: bool) -> tuple[float, float, float]:
    """Weighted least squares of y on x: (slope, intercept, R^2)."""
    x_mat = np.stack([np.ones_like(x), x], 1) if intercept else x[:, None]
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(x_mat * sw[:, None], y * sw, rcond=None)
    pred = x_mat @ coef
    ybar = float(np.average(y, weights=w)) if intercept else 0.0
    ss_res = float(np.sum(w * (y - pred) ** 2))
    ss_tot = float(np.sum(w * (y - ybar) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return (float(coef[1]), float(coef[0]), r2) if intercept else (float(coef[0]), 0.0, r2)


def paper_beta(lams: ArrayLike) -> DecayFit:
    """The paper's estimator (eq 31-32): least squares of log(lambda_k/lambda_1) on log k, k = 1..N,
    through the origin (lambda_1/lambda_1 = 1 at k = 1), slope -2 beta. `r2` is the paper's uncentred R^2 (total
    = sum of y^2, so a line through the origin scores high on any decaying spectrum); `r2_centred` beside it."""
    pos = _positive(lams)
    if len(pos) < 3:
        raise KernelError(f"need at least 3 positive eigenvalues for a decay fit, got {len(pos)}")
    k = np.arange(1, len(pos) + 1, dtype=np.float64)
    y = np.log(pos / pos[0])
    slope, _, r2 = _wls(np.log(k), y, np.ones_like(k), intercept=False)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    centred = 1.0 - float(np.sum((y - slope * np.log(k)) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    return DecayFit(-slope / 2, 0.0, r2, 1, len(pos), "power", "paper", centred)


def default_window(n_pos: int) -> tuple[int, int]:
    """k in [5, 100] clipped to the positive eigenvalues (docs/theory.md sec. 6)."""
    return min(5, max(1, n_pos // 4)), min(100, n_pos)


def _window(pos: Array, k_min: int | None, k_max: int | None, total: int) -> tuple[int, int]:
    dmin, dmax = default_window(len(pos))
    a, b = k_min or dmin, min(k_max or dmax, len(pos))
    if a < 1:
        raise ConfigError(f"k_min: must be >= 1, got {a}", param="k_min")
    if b - a + 1 < 3:
        raise KernelError(f"fit window [{a}, {b}] has fewer than 3 positive eigenvalues "
                          f"({len(pos)} positive of {total}); use more samples or a wider window")
    return a, b


def window_fit(lams: ArrayLike, k_min: int | None = None, k_max: int | None = None, weights: str = "1/k") -> DecayFit:
    """The window fit: free intercept, window [k_min, k_max], weights 1/k (each octave counts equally); biased at
    finite N (see `matched`), kept as a descriptive fit under its own name (`beta_window`)."""
    pos = _positive(lams)
    a, b = _window(pos, k_min, k_max, int(np.size(lams)))
    k = np.arange(a, b + 1, dtype=np.float64)
    w = 1.0 / k if weights == "1/k" else np.ones_like(k)
    slope, icpt, r2 = _wls(np.log(k), np.log(pos[a - 1:b]), w, intercept=True)
    return DecayFit(-slope / 2, icpt, r2, a, b, "power", "window")


def fit_beta(lams: ArrayLike, k_min: int | None = None, k_max: int | None = None, weights: str = "1/k") -> DecayFit:
    """Deprecated: the window fit (`window_fit`), not the headline beta. Use `ntkft.estimate_beta(K)` for beta."""
    warnings.warn("fit_beta is the window fit, not ntkft's beta: use ntkft.estimate_beta(K) (the headline) or "
                  "ntkft.spectrum.window_fit(eigenvalues) (this fit, by its name)", DeprecationWarning, stacklevel=2)
    return window_fit(lams, k_min, k_max, weights)


def fit_exponential(lams: ArrayLike, k_min: int | None = None, k_max: int | None = None) -> DecayFit:
    """log lambda_k = a - c k on the same window, to compare against the power law."""
    pos = _positive(lams)
    a, b = _window(pos, k_min, k_max, int(np.size(lams)))
    k = np.arange(a, b + 1, dtype=np.float64)
    slope, icpt, r2 = _wls(k, np.log(pos[a - 1:b]), np.ones_like(k), intercept=True)
    return DecayFit(-slope, icpt, r2, a, b, "exponential", "window")


def compare_models(lams: ArrayLike, k_min: int | None = None, k_max: int | None = None) -> DecayComparison:
    """Power law vs exponential decay on one window (unweighted R^2 of log lambda for both)."""
    p = window_fit(lams, k_min, k_max, weights="none")
    e = fit_exponential(lams, k_min, k_max)
    return DecayComparison(p.r2, e.r2, "power" if p.r2 >= e.r2 else "exponential", p.beta, e.beta, p.k_min, p.k_max)


def sensitivity(lams: ArrayLike, windows: list[tuple[int, int]] | None = None) -> list[WindowBeta]:
    """The window fit's beta and R^2 over several fit windows: how much the answer depends on the range."""
    pos = _positive(lams)
    n = len(pos)
    windows = windows or [(1, n), (2, n // 2), (5, min(50, n)), (5, min(100, n)), (10, n), (n // 10 or 1, n // 2)]
    out = []
    for a, b in windows:
        b = min(b, n)
        if b - a + 1 >= 3:
            f = window_fit(pos, a, b)
            out.append(WindowBeta(a, b, f.beta, f.r2))
    return out


def over_draws(kernels: list[Any], estimator: Estimator = "paper", seed: int = 0, floor: float = FLOOR) -> DrawsSummary:
    """mean +- sd of beta over kernels of independent draws of N samples (as the paper reports)."""
    from .matched import subsample_ci

    if estimator not in ("paper", "window", "matched"):
        raise ConfigError(f"estimator: must be paper, window or matched, got {estimator!r}", param="estimator")
    if not kernels:
        raise KernelError("over_draws needs at least one kernel")
    if estimator == "matched":
        betas = np.array([subsample_ci(k, draws=0, seed=seed, floor=floor).beta for k in kernels])
    else:
        fit = paper_beta if estimator == "paper" else window_fit
        betas = np.array([fit(eigenvalues(k, floor=floor)).beta for k in kernels])
    return DrawsSummary(estimator, betas.tolist(), float(betas.mean()),
                        float(betas.std(ddof=1)) if len(betas) > 1 else 0.0)


def rate_exponent(beta: float) -> float:
    """2 beta / (2 beta + 1): the error falls as N^(-this) (eq 30)."""
    if not math.isfinite(beta) or beta <= 0:
        raise KernelError(f"beta must be positive for a rate, got {beta}")
    return 2 * beta / (2 * beta + 1)


def predicted_error(n: ArrayLike, beta: float, c: float = 1.0) -> Array:
    """c * N^(-2 beta / (2 beta + 1))."""
    out: Array = c * np.asarray(n, dtype=np.float64) ** (-rate_exponent(beta))
    return out


def equivalent_n(n_ref: float, beta_ref: float, beta: float) -> float:
    """Samples a task with `beta` needs to match the rate bound of `n_ref` samples of a task with
    `beta_ref` (same constant): N = n_ref ** (r_ref / r)."""
    return float(n_ref ** (rate_exponent(beta_ref) / rate_exponent(beta)))


def effective_dimension(lams: ArrayLike, reg: ArrayLike) -> Array:
    """d(lambda) = sum_i lambda_i / (lambda_i + lambda), for a scalar or an array of lambdas."""
    pos = _positive(lams)
    r = np.atleast_1d(np.asarray(reg, dtype=np.float64))
    out: Array = (pos[None, :] / (pos[None, :] + r[:, None])).sum(1)
    return out
