"""Measures the theory speaks to, from per-row test errors: the rate r of e(n) = c + a n^-r (0 when the largest size
does not beat the constant predictor: such a curve is noise, which fits any r) and n_half, each with
a bootstrap over seeds and test rows jointly (every cell is scored on the same test rows, so rows are resampled
once per draw for all sizes); the predicted rate 2 beta / (2 beta + 1); rank statistics across variants."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..select.stats import RateFit, fit_rate, n_half


@dataclass
class Measured:
    """Rate and n_half of one variant's fine-tuning curve with their bootstrap intervals."""

    sizes: list[int]
    error: list[float]  # mean test error per size (seeds and rows)
    se: list[float]  # its standard error over test rows (seeds averaged first)
    baseline: float  # the constant predictor's error on the same rows
    rate: float
    rate_ci: tuple[float, float]
    c: float
    a: float
    n_half: float
    n_half_ci: tuple[float, float]


def curve_matrix(errors: dict[int, list[list[float]]], sizes: list[int]) -> np.ndarray:
    """(seeds, sizes, rows) array of per-row errors; the seeds present at every size."""
    seeds = min(len(errors[s]) for s in sizes)
    return np.array([[errors[s][i] for s in sizes] for i in range(seeds)], dtype=np.float64)


def measure(sizes: list[int], errors: np.ndarray, baseline: np.ndarray, *, n_boot: int, seed: int = 0,
            level: float = 0.9, r_max: float = 4.0) -> Measured:
    """`errors`: (seeds, sizes, rows) per-row test errors; `baseline`: (seeds, rows) of the constant predictor."""
    e = errors.mean(axis=(0, 2))
    base = float(baseline.mean())
    fit = fit_rate(sizes, e, r_max=r_max, n_boot=0)  # c >= 0: the floor of an error
    if not e[-1] < base:  # never beats the constant predictor: no rate to speak of (noise would fit any r)
        fit = RateFit(0.0, float(e.mean()), 0.0)
    nh = n_half(sizes, e, base)
    rng = np.random.default_rng(seed)
    n_seeds, _, n_rows = errors.shape
    rs, hs = [], []
    for _ in range(n_boot):
        si, ri = rng.integers(0, n_seeds, n_seeds), rng.integers(0, n_rows, n_rows)
        eb = errors[si][:, :, ri].mean(axis=(0, 2))
        bb = float(baseline[si][:, ri].mean())
        rs.append(fit_rate(sizes, eb, r_max=r_max, n_boot=0).r if eb[-1] < bb else 0.0)
        hs.append(n_half(sizes, eb, bb))
    q = (1 - level) / 2

    def interval(v: list[float]) -> tuple[float, float]:
        a = np.asarray(v, dtype=np.float64)
        a = a[np.isfinite(a)]
        return (float(np.quantile(a, q)), float(np.quantile(a, 1 - q))) if len(a) else (math.nan, math.nan)

    se = errors.mean(axis=0).std(axis=1, ddof=1) / math.sqrt(n_rows)
    return Measured(list(sizes), e.tolist(), se.tolist(), base, fit.r, interval(rs), fit.c, fit.a, nh, interval(hs))


def predicted_rate(beta: float) -> float:
    """Eq 30's exponent 2 beta / (2 beta + 1) (NaN for beta <= 0)."""
    return 2 * beta / (2 * beta + 1) if beta > 0 else math.nan


def partial_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    """Spearman correlation of x and y with z partialled out (on ranks)."""
    rx, ry, rz = (stats.rankdata(v) for v in (x, y, z))
    rxy, rxz, ryz = (float(np.corrcoef(a, b)[0, 1]) for a, b in ((rx, ry), (rx, rz), (ry, rz)))
    den = math.sqrt(max((1 - rxz ** 2) * (1 - ryz ** 2), 0.0))
    return (rxy - rxz * ryz) / den if den > 0 else math.nan


def verdict(p: float, power_07: float, alpha: float, power_needed: float, k: int, k_needed: int = 12) -> str:
    """The rule stated before the run: supported (p <= alpha); not supported (p > alpha at power >= power_needed
    at rho 0.7, with every planned variant measured); otherwise inconclusive."""
    if not math.isfinite(p):
        return "inconclusive"
    if p <= alpha:
        return "supported"
    if power_07 >= power_needed and k >= k_needed:
        return "not supported"
    return "inconclusive"
