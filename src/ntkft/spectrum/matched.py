"""The decay rate beta of the kernel's operator, corrected for finite N, with a subsampling interval.

Why not the plain window fit: the eigenvalues of K/N are biased estimates of the operator's eigenvalues mu_k,
and the bias depends on k/N (tail mass lifts lambda_k for slow decay, fast decay pushes it down): on kernels with
a known spectrum mu_k = k^(-2 beta) the window fit is off by -0.16 (beta 0.6, N 100) to +0.05 (beta 2), several
standard errors. But a random half of the N points is itself an i.i.d. sample, whose k/2-th eigenvalue carries
the same relative distortion as the full sample's k-th. So

    log lambda^(m)_{r k} - log lambda^(N)_k  ~  log mu_{r k} - log mu_k = 2 beta log(1/r),   r = m/N,

with the distortion cancelled. The estimate averages this over a window k in [k_min, k_max] (weights 1/k, so each
octave counts once), with lambda^(m) the mean log spectrum of `draws` random m-subsets. It estimates the
operator's decay on indices [r k_min, k_max]; for a pure power law that is beta itself.

The interval is a symmetric subsampling interval (Politis & Romano 1994) with the delete-d jackknife scale
sqrt(b / (N - b)) (Shao & Wu 1989): the same estimator on random b-subsets (its window scaled by b/N),
half-width = scale * quantile_level |beta_b - beta_N|. It is centred on the estimate it reports, so it always
contains it; any bias left between sizes b and N widens it instead of moving it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import KernelError
from .checks import bad, count
from .checks import level as check_level
from .eig import FLOOR, Array, as_kernel, eigenvalues, log_spectra
from .result import Result

CHUNK = 2 * 10**7  # float64 entries of subsample matrices held at once (160 MB)


@dataclass
class BetaCI(Result):
    """The scale-matched beta, its window and its subsampling interval (low/high are None when N is too small)."""

    beta: float
    low: float | None
    high: float | None
    level: float
    k_min: int  # the window actually used, in the full spectrum
    k_max: int
    m_estimate: int  # subset size of the estimate (about N/2)
    m: int  # subset size b of the interval's subsamples
    draws: int  # interval subsamples that gave an estimate
    inner_draws: int
    num_positive: int
    method: str = "scale-matched"
    note: str = ""
    estimates: list[float] = field(default_factory=list)

    def contains(self, value: float) -> bool:
        """True when `value` lies in the interval (False when there is none)."""
        return self.low is not None and self.high is not None and self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        """Fields as JSON (the subsample estimates are kept: they are the interval's evidence)."""
        return super().to_dict()


def _half(n: int) -> int:
    return (n + 1) // 2


def matched_window(n: int, num_positive: int, k_min: int | None = None, k_max: int | None = None) -> tuple[int, int]:
    """Default window: k_max = half the positive eigenvalues (at most N/2), k_min = min(5, N/8) but >= 1/r."""
    r = _half(n) / n
    lo = max(math.ceil(1 / r - 1e-12), min(5, n // 8))
    hi = min(n, num_positive) // 2
    a = lo if k_min is None else max(int(k_min), math.ceil(1 / r - 1e-12))
    b = hi if k_max is None else min(int(k_max), hi)
    return a, b


def _interp_weights(pos: Array, m: int) -> tuple[NDArray[np.int64], Array]:
    """Linear interpolation in log k at real 1-based positions `pos` of a length-m sequence: (lower index, t)."""
    lo = np.clip(np.floor(pos + 1e-9).astype(np.int64), 1, max(m - 1, 1))
    t = np.where(lo < m, (np.log(pos) - np.log(lo)) / np.log((lo + 1) / lo), 0.0)
    return lo - 1, np.clip(t, 0.0, 1.0)


def _statistic(l_full: Array, l_sub: Array, r: float, a: int, b: int) -> Array:
    """The matched estimate for each row: l_full (B, n) and the mean subset log spectra l_sub (B, m)."""
    k = np.arange(a, b + 1, dtype=np.float64)
    m = l_sub.shape[1]
    lo, t = _interp_weights(r * k, m)
    hi = np.minimum(lo + 1, m - 1)
    sub = (1 - t) * l_sub[:, lo] + t * l_sub[:, hi]
    d = sub - l_full[:, a - 1:b]
    w = 1.0 / k
    out: Array = (d @ w) / w.sum() / (2 * math.log(1 / r))
    return out


def _subsets(rng: np.random.Generator, n: int, m: int, shape: tuple[int, ...]) -> NDArray[np.int64]:
    """Random m-subsets of range(n) without replacement, one per leading index."""
    out: NDArray[np.int64] = np.argsort(rng.random((*shape, n)), axis=-1)[..., :m]
    return out


def _estimate(kk: Array, idx: NDArray[np.int64], inner: int, rng: np.random.Generator, a: int, b: int,
              floor: float) -> Array:
    """The matched estimate on each subset idx[i] (all of size n): its spectrum against `inner` half-subsets."""
    n = idx.shape[1]
    m = _half(n)
    l_full = log_spectra(kk, idx, floor)
    pos = _subsets(rng, n, m, (idx.shape[0], inner))
    sub_idx = np.take_along_axis(idx[:, None, :], pos, axis=2).reshape(-1, m)
    l_sub = log_spectra(kk, sub_idx, floor).reshape(idx.shape[0], inner, m).mean(axis=1)
    return _statistic(l_full, l_sub, m / n, a, b)


def matched_beta(k: Any, k_min: int | None = None, k_max: int | None = None, draws: int = 100,
                 seed: int = 0, floor: float = FLOOR) -> tuple[float, int, int, int]:
    """The scale-matched beta of K (see the module doc): (beta, k_min, k_max, subset size m)."""
    est = subsample_ci(k, draws=0, inner_draws=draws, k_min=k_min, k_max=k_max, seed=seed, floor=floor)
    return est.beta, est.k_min, est.k_max, est.m_estimate


def subsample_ci(k: Any, m: int | None = None, draws: int = 200, level: float = 0.9, seed: int = 0,
                 k_min: int | None = None, k_max: int | None = None, inner_draws: int | None = None,
                 floor: float = FLOOR, lams: Array | None = None) -> BetaCI:
    """beta (scale-matched, finite-N corrected) with a symmetric subsampling interval at `level`.

    `m` is the interval's subsample size (default about N/2), `draws` its number of subsamples (0: no interval),
    `inner_draws` the half-subsets behind each estimate (default 100 for the estimate, fewer per subsample);
    eigenvalues below `floor` * lambda_1 count as zero; `lams` are K/N's eigenvalues if already computed."""
    kk = as_kernel(k)
    n = kk.shape[0]
    level = check_level(level)
    draws = count("draws", draws, 0)
    lams = eigenvalues(kk, floor=floor) if lams is None else lams
    n_pos = int((lams > 0).sum())
    a, b = matched_window(n, n_pos, k_min, k_max)
    if b < a:
        raise KernelError(f"too few positive eigenvalues for a decay fit: {n_pos} of N={n} (window k={a}..{b}); "
                          "use more samples")
    rng = np.random.default_rng(seed)
    d_full = count("inner_draws", inner_draws, 1) if inner_draws is not None else int(np.clip(10000 // n, 20, 100))
    beta = float(_estimate(kk, np.arange(n)[None, :], d_full, rng, a, b, floor)[0])
    if not math.isfinite(beta):
        raise KernelError(f"the half-subsets of the kernel have too few positive eigenvalues for the window k={a}..{b}")
    size = _half(n) if m is None else count("m", m, 2)
    if m is not None and size >= n:
        raise bad("m", f"the subsample size must be below N={n}, got {m}")
    res = BetaCI(beta, None, None, level, a, b, _half(n), size, 0, 0, n_pos)
    b_sub = min(b * size // n, (min(size, n_pos) // 2))
    r_sub = _half(size) / size
    a_sub = max(a, math.ceil(1 / r_sub - 1e-12))
    if draws == 0:
        res.note = "not requested (0 draws)"
        return res
    if b_sub < a_sub:
        res.note = f"subsets of {size} leave no fit window (N={n}, {n_pos} positive eigenvalues)"
        return res
    inner = inner_draws if inner_draws is not None else int(np.clip(4000 // size, 4, 20))
    per_chunk = max(1, CHUNK // (inner * _half(size) ** 2 + size ** 2))
    ests = []
    for start in range(0, draws, per_chunk):
        idx = _subsets(rng, n, size, (min(per_chunk, draws - start),))
        ests.append(_estimate(kk, idx, inner, rng, a_sub, b_sub, floor))
    est = np.concatenate(ests)
    est = est[np.isfinite(est)]
    res.inner_draws, res.draws, res.estimates = inner, int(len(est)), est.tolist()
    if len(est) < max(10, draws // 2):
        res.note = f"only {len(est)} of {draws} subsamples had enough positive eigenvalues"
        return res
    half = math.sqrt(size / (n - size)) * float(np.quantile(np.abs(est - beta), level))
    res.low, res.high = beta - half, beta + half
    return res
