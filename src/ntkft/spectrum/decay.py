"""Eigenvalue decay: the rate beta in lambda_k ~ k^(-2 beta), its uncertainty, and what it predicts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import KernelError
from .eig import as_kernel, eigenvalues


@dataclass
class DecayFit:
    """One fit of log lambda_k against log k (power law) or k (exponential) on a window of k."""

    beta: float  # power law: slope = -2 beta; exponential: the rate c in lambda_k ~ exp(-c k)
    intercept: float
    r2: float
    k_min: int
    k_max: int
    model: str = "power"
    method: str = "window"

    def to_dict(self) -> dict:
        return asdict(self)


def _positive(lams: np.ndarray) -> np.ndarray:
    lams = np.asarray(lams, dtype=np.float64)
    if lams.ndim != 1 or not np.isfinite(lams).all():
        raise KernelError("eigenvalues must be a finite 1-D array")
    return lams[lams > 0]


def _wls(x, y, w, intercept: bool) -> tuple[float, float, float]:
    w = np.asarray(w, dtype=np.float64)
    if intercept:
        x_mat = np.stack([np.ones_like(x), x], 1)
    else:
        x_mat = x[:, None]
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(x_mat * sw[:, None], y * sw, rcond=None)
    pred = x_mat @ coef
    ybar = np.average(y, weights=w) if intercept else 0.0
    ss_res = np.sum(w * (y - pred) ** 2)
    ss_tot = np.sum(w * (y - ybar) ** 2)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return (float(coef[1]), float(coef[0]), float(r2)) if intercept else (float(coef[0]), 0.0, float(r2))


def paper_beta(lams) -> DecayFit:
    """The paper's estimator (eq 31-32): least squares of log(lambda_k/lambda_1) on log k, k = 1..N,
    through the origin (lambda_1/lambda_1 = 1 at k = 1), slope -2 beta."""
    pos = _positive(lams)
    if len(pos) < 3:
        raise KernelError(f"need at least 3 positive eigenvalues for a decay fit, got {len(pos)}")
    k = np.arange(1, len(pos) + 1, dtype=np.float64)
    slope, _, r2 = _wls(np.log(k), np.log(pos / pos[0]), np.ones_like(k), intercept=False)
    return DecayFit(-slope / 2, 0.0, r2, 1, len(pos), "power", "paper")


def default_window(n_pos: int) -> tuple[int, int]:
    """k in [5, 100] clipped to the positive eigenvalues (THEORY.md sec. 6)."""
    return min(5, max(1, n_pos // 4)), min(100, n_pos)


def fit_beta(lams, k_min: int | None = None, k_max: int | None = None, weights: str = "1/k") -> DecayFit:
    """Better default: free intercept, window [k_min, k_max], weights 1/k (each octave counts equally)."""
    pos = _positive(lams)
    dmin, dmax = default_window(len(pos))
    k_min, k_max = k_min or dmin, min(k_max or dmax, len(pos))
    if k_max - k_min + 1 < 3:
        raise KernelError(f"fit window [{k_min}, {k_max}] has fewer than 3 positive eigenvalues "
                          f"({len(pos)} positive of {len(np.asarray(lams))}); use more samples or a wider window")
    k = np.arange(k_min, k_max + 1, dtype=np.float64)
    y = np.log(pos[k_min - 1:k_max])
    w = 1.0 / k if weights == "1/k" else np.ones_like(k)
    slope, icpt, r2 = _wls(np.log(k), y, w, intercept=True)
    return DecayFit(-slope / 2, icpt, r2, k_min, k_max, "power", "window")


def fit_exponential(lams, k_min: int | None = None, k_max: int | None = None) -> DecayFit:
    """log lambda_k = a - c k on the same window, to compare against the power law."""
    pos = _positive(lams)
    dmin, dmax = default_window(len(pos))
    k_min, k_max = k_min or dmin, min(k_max or dmax, len(pos))
    if k_max - k_min + 1 < 3:
        raise KernelError(f"fit window [{k_min}, {k_max}] has fewer than 3 positive eigenvalues")
    k = np.arange(k_min, k_max + 1, dtype=np.float64)
    slope, icpt, r2 = _wls(k, np.log(pos[k_min - 1:k_max]), np.ones_like(k), intercept=True)
    return DecayFit(-slope, icpt, r2, k_min, k_max, "exponential", "window")


def compare_models(lams, k_min: int | None = None, k_max: int | None = None) -> dict:
    """Power law vs exponential decay on one window (unweighted R^2 of log lambda for both)."""
    p = fit_beta(lams, k_min, k_max, weights="none")
    e = fit_exponential(lams, k_min, k_max)
    return {"power_r2": p.r2, "exponential_r2": e.r2, "better": "power" if p.r2 >= e.r2 else "exponential",
            "power_beta": p.beta, "exponential_rate": e.beta}


def sensitivity(lams, windows: list[tuple[int, int]] | None = None) -> list[dict]:
    """beta and R^2 over several fit windows: how much the answer depends on the range."""
    pos = _positive(lams)
    n = len(pos)
    windows = windows or [(1, n), (2, n // 2), (5, min(50, n)), (5, min(100, n)), (10, n), (n // 10 or 1, n // 2)]
    out = []
    for a, b in windows:
        b = min(b, n)
        if b - a + 1 >= 3:
            f = fit_beta(pos, a, b)
            out.append({"k_min": a, "k_max": b, "beta": f.beta, "r2": f.r2})
    return out


@dataclass
class BetaCI:
    beta: float
    low: float
    high: float
    level: float
    m: int
    draws: int
    estimates: list[float] = field(default_factory=list)


def subsample_ci(k, m: int | None = None, draws: int = 200, level: float = 0.9, seed: int = 0,
                 k_min: int | None = None, k_max: int | None = None) -> BetaCI:
    """Subsampling (without replacement) confidence interval for beta from one kernel matrix.

    Each draw takes m of the N samples, fits beta on that sub-kernel's normalised spectrum, and the
    interval uses the spread of sqrt(m)(beta_m - beta_N) scaled to N (Politis & Romano 1994)."""
    k = as_kernel(k)
    n = k.shape[0]
    m = m or max(10, int(0.5 * n))
    if not 3 <= m < n:
        raise KernelError(f"subsample size m must be in [3, N) = [3, {n}), got {m}")
    full = fit_beta(eigenvalues(k), k_min, k_max)
    rng = np.random.default_rng(seed)
    kmax_sub = min(full.k_max, m)
    ests = []
    for _ in range(draws):
        idx = rng.choice(n, size=m, replace=False)
        lam = eigenvalues(k[np.ix_(idx, idx)])
        try:
            ests.append(fit_beta(lam, full.k_min, kmax_sub).beta)
        except KernelError:
            continue
    if len(ests) < 10:
        raise KernelError("too few subsamples gave a fit; use a larger m or more samples")
    ests = np.asarray(ests)
    root = np.sqrt(m) * (ests - full.beta)
    lo_q, hi_q = np.quantile(root, [(1 - level) / 2, (1 + level) / 2])
    return BetaCI(full.beta, float(full.beta - hi_q / np.sqrt(n)), float(full.beta - lo_q / np.sqrt(n)), level, m,
                  len(ests), ests.tolist())


def over_draws(kernels: list, estimator: str = "paper") -> dict:
    """mean +- std of beta over kernels of independent draws of N samples (as the paper reports)."""
    fits = [(paper_beta if estimator == "paper" else fit_beta)(eigenvalues(k)) for k in kernels]
    betas = np.array([f.beta for f in fits])
    return {"estimator": estimator, "betas": betas.tolist(), "mean": float(betas.mean()),
            "std": float(betas.std(ddof=1)) if len(betas) > 1 else 0.0}


def rate_exponent(beta: float) -> float:
    """2 beta / (2 beta + 1): the error falls as N^(-this) (eq 30)."""
    if beta <= 0:
        raise KernelError(f"beta must be positive for a rate, got {beta}")
    return 2 * beta / (2 * beta + 1)


def predicted_error(n, beta: float, c: float = 1.0):
    """c * N^(-2 beta / (2 beta + 1))."""
    return c * np.asarray(n, dtype=np.float64) ** (-rate_exponent(beta))


def equivalent_n(n_ref: float, beta_ref: float, beta: float) -> float:
    """Samples a task with `beta` needs to match the rate bound of `n_ref` samples of a task with
    `beta_ref` (same constant): N = n_ref ** (r_ref / r)."""
    return float(n_ref ** (rate_exponent(beta_ref) / rate_exponent(beta)))


def effective_dimension(lams, reg) -> np.ndarray:
    """d(lambda) = sum_i lambda_i / (lambda_i + lambda), for a scalar or an array of lambdas."""
    lams = _positive(lams)
    reg = np.atleast_1d(np.asarray(reg, dtype=np.float64))
    return (lams[None, :] / (lams[None, :] + reg[:, None])).sum(1)
