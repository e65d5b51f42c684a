"""Statistics for learning curves and rank tests: the rate fit e(n) = c + a n^-r, n_half, exact one-sided
Spearman with its power by simulation, Kendall and stratified permutation tests.

Permutation p-values count the observed arrangement (p = (1 + #{stat_perm >= stat}) / (1 + n_perm)) so they are
never 0; exact where the permutations can be enumerated."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, stats

from ..errors import DataError
from ..spectrum.checks import bad, count
from ..spectrum.eig import Array

EXACT_K = 9  # Spearman: enumerate all k! permutations up to this k (9! = 362,880)
MC_PERM = 200_000  # Spearman: Monte Carlo permutations above EXACT_K
CHUNK = 2_000  # permutations scored at once


def _vec(x: ArrayLike, name: str, n: int | None = None) -> Array:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if n is not None and len(arr) != n:
        raise bad(name, f"has {len(arr)} values, expected {n}")
    if not np.isfinite(arr).all():
        raise bad(name, "contains NaN or inf")
    return arr


# ---------------------------------------------------------------- rate fit and n_half

@dataclass
class RateFit:
    """e(n) = c + a n^-r fitted by least squares (c >= 0 unless asked free); ci: bootstrap interval of r (None
    without replicates)."""

    r: float
    c: float
    a: float
    ci: tuple[float, float] | None = None


def _fit_one(n: Array, e: Array, r_max: float) -> tuple[float, float, float, float]:
    """(r, c, a, sse): for each r the best (c, a >= 0) is linear least squares; r by a bounded 1-D search."""

    def inner(r: float) -> tuple[float, float, float]:
        x = n ** -r
        xc = x - x.mean()
        sxx = float(xc @ xc)
        a = float(xc @ (e - e.mean()) / sxx) if sxx > 0 else 0.0
        a = max(a, 0.0)
        c = float(np.mean(e - a * x))
        return c, a, float(np.sum((e - c - a * x) ** 2))

    grid = np.linspace(1e-3, r_max, 200)
    sse = np.array([inner(float(r))[2] for r in grid])
    i = int(np.argmin(sse))
    lo, hi = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, len(grid) - 1)])
    res = optimize.minimize_scalar(lambda r: inner(float(r))[2], bounds=(lo, hi), method="bounded",
                                   options={"xatol": 1e-6})
    r = float(res.x) if res.fun <= sse[i] else float(grid[i])
    c, a, s = inner(r)
    if a == 0.0:  # a flat or rising curve has no rate
        return 0.0, float(np.mean(e)), 0.0, float(np.sum((e - e.mean()) ** 2))
    return r, c, a, s


def _fit_floor(n: Array, e: Array, r_max: float) -> tuple[float, float, float]:
    """(r, 0, a): e(n) = a n^-r with the floor c = 0, a >= 0 by least squares for each r of a 400-point grid (the
    log-log slope of a curve that still accelerates); r = 0 when the curve does not fall."""
    best = (math.inf, 0.0, 0.0)
    for r in np.linspace(1e-3, r_max, 400):
        x = n ** -r
        a = max(float(x @ e / (x @ x)), 0.0)
        sse = float(np.sum((e - a * x) ** 2))
        if sse < best[0]:
            best = (sse, float(r), a)
    return (best[1] if best[2] > 0 else 0.0), 0.0, best[2]


def _fit(n: Array, e: Array, r_max: float, floor: bool) -> tuple[float, float, float]:
    """(r, c, a) of one curve: c free, or with `floor` c >= 0 (c = 0 where the free fit puts it below)."""
    r, c, a, _ = _fit_one(n, e, r_max)
    if floor and c < 0:
        return _fit_floor(n, e, r_max)
    return r, c, a


def fit_rate(sizes: ArrayLike, errors: ArrayLike, *, r_max: float = 4.0, n_boot: int = 1000, level: float = 0.9,
             seed: int = 0, floor: bool = True) -> RateFit:
    """Fit e(n) = c + a n^-r (a >= 0, 0 < r <= r_max) by least squares.

    errors: one value per size, or a (replicates, sizes) array (seeds, subsets): then the fit is on the mean
    curve and `ci` is the `level` percentile interval of r over `n_boot` resamples of the replicates.
    floor: keep c >= 0, as for any error or loss (an error cannot fall below zero). A curve that still accelerates
    over the sizes (MiniLM SST-2: 0.44, 0.39, 0.23 at n = 64, 128, 256) drives a free c negative and r to its
    lower bound; with the floor, c = 0 and r is the log-log slope. False: c free (a curve that may go negative)."""
    n = _vec(sizes, "sizes")
    if len(n) < 3 or (n <= 0).any():
        raise bad("sizes", "needs at least 3 sizes > 0")
    e = np.asarray(errors, dtype=np.float64)
    e2 = e[None, :] if e.ndim == 1 else e
    if e2.ndim != 2 or e2.shape[1] != len(n) or not np.isfinite(e2).all():
        raise bad("errors", f"must be finite, shape ({len(n)},) or (replicates, {len(n)}), got {e.shape}")
    if not 0 < r_max:
        raise bad("r_max", f"must be > 0, got {r_max}")
    r, c, a = _fit(n, e2.mean(0), r_max, floor)
    ci = None
    if e2.shape[0] > 1 and n_boot > 0:
        rng = np.random.default_rng(seed)
        rs = [_fit(n, e2[rng.integers(0, e2.shape[0], e2.shape[0])].mean(0), r_max, floor)[0] for _ in range(n_boot)]
        q = (1 - level) / 2
        ci = (float(np.quantile(rs, q)), float(np.quantile(rs, 1 - q)))
    return RateFit(r, c, a, ci)


def n_half(sizes: ArrayLike, errors: ArrayLike, baseline: float) -> float:
    """The size closing half the gap between the constant predictor (`baseline`) and the error at the largest size:
    the first crossing of (baseline + e_last) / 2, interpolated linearly in log n. The baseline counts as the error
    at n = 1 (a model fitted on no data), so a curve already below the target at its first size interpolates from
    there. NaN when the largest size does not beat the baseline."""
    n = _vec(sizes, "sizes")
    e = _vec(errors, "errors", len(n))
    if len(n) < 1 or (n < 1).any() or (np.diff(n) <= 0).any():
        raise bad("sizes", "must be increasing and >= 1")
    if not math.isfinite(baseline):
        raise bad("baseline", "must be finite")
    if e[-1] >= baseline:
        return float("nan")
    target = (baseline + e[-1]) / 2
    xs = np.concatenate([[1.0], n])
    ys = np.concatenate([[baseline], e])
    for i in range(1, len(xs)):
        if ys[i] <= target:
            if ys[i - 1] == ys[i]:
                return float(xs[i])
            t = (ys[i - 1] - target) / (ys[i - 1] - ys[i])
            return float(math.exp(math.log(xs[i - 1]) + t * (math.log(xs[i]) - math.log(xs[i - 1]))))
    return float(n[-1])  # not reached: e[-1] <= target always holds


# ---------------------------------------------------------------- Spearman

def _ranks(x: Array) -> Array:
    out: Array = stats.rankdata(x).astype(np.float64)
    return out


def _pearson_rows(a: Array, b: Array) -> Array:
    """Pearson correlation of the vector a with each row of b."""
    ac = a - a.mean()
    bc = b - b.mean(1, keepdims=True)
    den = np.sqrt((ac @ ac) * (bc * bc).sum(1))
    out: Array = np.divide(bc @ ac, den, out=np.zeros(len(b)), where=den > 0)
    return out


@lru_cache(maxsize=8)
def _all_perms(k: int) -> NDArray[np.int64]:
    out: NDArray[np.int64] = np.array(list(itertools.permutations(range(k))), dtype=np.int64)
    return out


def _spearman_null(rx: Array, ry: Array, n_perm: int, rng: np.random.Generator) -> tuple[Array, bool]:
    """Spearman rho of x against every permutation of y's ranks (exact for k <= EXACT_K), and whether exact."""
    k = len(rx)
    if k <= EXACT_K:
        return _pearson_rows(rx, ry[_all_perms(k)]), True
    rows = [_pearson_rows(rx, ry[rng.permuted(np.tile(np.arange(k), (min(CHUNK, n_perm - s), 1)), axis=1)])
            for s in range(0, n_perm, CHUNK)]
    return np.concatenate(rows), False


def spearman_one_sided(x: ArrayLike, y: ArrayLike, *, n_perm: int = MC_PERM, seed: int = 0) -> tuple[float, float]:
    """Spearman rho (average ranks for ties) and the one-sided p of H1: rho > 0 under the permutation null:
    exact over all k! orderings for k <= 9, else (1 + #{rho_perm >= rho}) / (1 + n_perm)."""
    xv = _vec(x, "x")
    yv = _vec(y, "y", len(xv))
    if len(xv) < 2:
        raise DataError("spearman: needs at least 2 pairs")
    rx, ry = _ranks(xv), _ranks(yv)
    rho = float(_pearson_rows(rx, ry[None, :])[0])
    null, exact = _spearman_null(rx, ry, n_perm, np.random.default_rng(seed))
    ge = int(np.sum(null >= rho - 1e-12))
    return rho, (ge / len(null) if exact else (ge + 1) / (len(null) + 1))


def spearman_critical(k: int, alpha: float = 0.05, *, n_perm: int = MC_PERM, seed: int = 0) -> float:
    """The smallest rho whose one-sided p (untied ranks, k pairs) is <= alpha; inf when none is."""
    r = np.arange(1, k + 1, dtype=np.float64)
    null, exact = _spearman_null(r, r, n_perm, np.random.default_rng(seed))
    srt = np.sort(null)
    vals = np.unique(np.round(null, 12))
    ge = len(srt) - np.searchsorted(srt, vals - 1e-12, side="left")
    p = ge / len(srt) if exact else (ge + 1) / (len(srt) + 1)
    ok = vals[p <= alpha]
    if len(ok):
        return float(ok.min())
    return float("inf")


def spearman_power(k: int, rho: float, *, alpha: float = 0.05, n_sim: int = 2000, seed: int = 0) -> float:
    """Power of the one-sided exact Spearman test at level alpha with k pairs, when the true Spearman correlation is
    rho: k pairs from a bivariate normal with Pearson r = 2 sin(pi rho / 6) (whose Spearman correlation is rho),
    `n_sim` simulated samples; the fraction whose rho reaches the critical value."""
    k = count("k", k, 2)
    n_sim = count("n_sim", n_sim, 1)
    if not -1 <= rho <= 1:
        raise bad("rho", f"must be in [-1, 1], got {rho}")
    crit = spearman_critical(k, alpha, seed=seed)
    if not math.isfinite(crit):
        return 0.0
    r = 2 * math.sin(math.pi * rho / 6)
    rng = np.random.default_rng(seed + 1)
    z = rng.standard_normal((n_sim, k, 2))
    xs = z[:, :, 0]
    ys = r * z[:, :, 0] + math.sqrt(max(1 - r * r, 0.0)) * z[:, :, 1]
    rx = np.argsort(np.argsort(xs, 1), 1).astype(np.float64)
    ry = np.argsort(np.argsort(ys, 1), 1).astype(np.float64)
    rxc, ryc = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    sims = (rxc * ryc).sum(1) / np.sqrt((rxc ** 2).sum(1) * (ryc ** 2).sum(1))
    return float(np.mean(sims >= crit - 1e-12))


# ---------------------------------------------------------------- Kendall and the stratified test

Stat = Literal["kendall", "spearman", "pearson"]


def _pairs(k: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    i, j = np.triu_indices(k, 1)
    return i.astype(np.int64), j.astype(np.int64)


def _stat_rows(stat: Stat, x: Array, ys: Array) -> Array:
    """The statistic of x against each row of ys (tau-b for Kendall)."""
    if stat == "pearson":
        return _pearson_rows(x, ys)
    if stat == "spearman":
        return _pearson_rows(_ranks(x), np.apply_along_axis(_ranks, 1, ys))
    i, j = _pairs(len(x))
    sx = np.sign(x[i] - x[j])
    sy = np.sign(ys[:, i] - ys[:, j])
    den = np.sqrt(np.sum(sx != 0) * np.sum(sy != 0, axis=1))
    out: Array = np.divide(sy @ sx, den, out=np.zeros(len(ys)), where=den > 0)
    return out


def _perm_rows(y: Array, n: int, rng: np.random.Generator) -> Array:
    out: Array = y[rng.permuted(np.tile(np.arange(len(y)), (n, 1)), axis=1)]
    return out


def _check_stat(stat: str) -> Stat:
    if stat not in ("kendall", "spearman", "pearson"):
        raise bad("stat", f"must be kendall, spearman or pearson, got {stat!r}")
    return stat  # type: ignore[return-value]


def kendall_perm(x: ArrayLike, y: ArrayLike, *, n_perm: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Kendall tau-b and its two-sided permutation p: exact over all orderings when k! <= n_perm."""
    xv = _vec(x, "x")
    yv = _vec(y, "y", len(xv))
    if len(xv) < 2:
        raise DataError("kendall: needs at least 2 pairs")
    tau = float(_stat_rows("kendall", xv, yv[None, :])[0])
    k = len(xv)
    if math.factorial(k) <= n_perm:
        null = _stat_rows("kendall", xv, yv[_all_perms(k)])
        return tau, float(np.mean(np.abs(null) >= abs(tau) - 1e-12))
    rng = np.random.default_rng(seed)
    hits = sum(int(np.sum(np.abs(_stat_rows("kendall", xv, _perm_rows(yv, min(CHUNK, n_perm - s), rng)))
                          >= abs(tau) - 1e-12)) for s in range(0, n_perm, CHUNK))
    return tau, (hits + 1) / (n_perm + 1)


def stratified_perm_test(groups: Sequence[tuple[ArrayLike, ArrayLike]], *, stat: str = "kendall",
                         n_perm: int = 10000, seed: int = 0,
                         alternative: Literal["two-sided", "greater"] = "two-sided") -> tuple[float, float]:
    """The mean within-group statistic (e.g. Kendall tau per task, averaged over tasks) and its permutation p, y
    permuted within each group independently (pooling tasks without mixing their scales)."""
    st = _check_stat(stat)
    n_perm = count("n_perm", n_perm, 1)
    data = []
    for g, (x, y) in enumerate(groups):
        xv = _vec(x, f"groups[{g}].x")
        yv = _vec(y, f"groups[{g}].y", len(xv))
        if len(xv) < 2:
            raise DataError(f"stratified test: group {g} has fewer than 2 pairs")
        data.append((xv, yv))
    if not data:
        raise DataError("stratified test: no groups")
    obs = float(np.mean([_stat_rows(st, xv, yv[None, :])[0] for xv, yv in data]))
    rng = np.random.default_rng(seed)
    hits = 0
    for s in range(0, n_perm, CHUNK):
        m = min(CHUNK, n_perm - s)
        null = np.mean([_stat_rows(st, xv, _perm_rows(yv, m, rng)) for xv, yv in data], axis=0)
        hits += int(np.sum((np.abs(null) >= abs(obs) - 1e-12) if alternative == "two-sided" else (null >= obs - 1e-12)))
    return obs, (hits + 1) / (n_perm + 1)
