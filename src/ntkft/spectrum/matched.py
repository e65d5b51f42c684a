"""The decay rate beta of the kernel's operator, corrected for finite N, with an interval from simulated kernels.

Why not the plain window fit: the eigenvalues of K/N are biased estimates of the operator's eigenvalues mu_k,
and the bias depends on k/N (tail mass lifts lambda_k for slow decay, fast decay pushes it down): on kernels with
a known spectrum mu_k = k^(-2 beta) the window fit is off by -0.16 (beta 0.6, N 100) to +0.05 (beta 2), several
standard errors. But a random half of the N points is itself an i.i.d. sample, whose k/2-th eigenvalue carries
the same relative distortion as the full sample's k-th. So

    log lambda^(m)_{r k} - log lambda^(N)_k  ~  log mu_{r k} - log mu_k = 2 beta log(1/r),   r = m/N,

with the distortion cancelled. The estimate fits these matched points d_k over a window k in [k_min, k_max]
(weights 1/k, so each octave counts once), with lambda^(m) the mean log spectrum of `draws` random m-subsets.
For a pure power law d_k = 2 beta log(1/r) is flat and the fit is their mean. Real eNTKs are power laws only
asymptotically (a flat start, or a few large leading eigenvalues): for mu_k = (k + c)^(-2 beta) the points rise as
d_k = 2 beta log((k + c)/(r k + c)), so the fit also chooses an index shift c (kept only where it halves the
spread of the points) and may start an octave or two later (past leading spikes). Without the shift (the previous
default) the estimate was off by > 0.3 beta on such kernels; with it, see docs/results/efficiency/estimators.md.

The interval (`interval="parametric"`, the default) is a parametric bootstrap of the estimator itself: `draws`
kernels of N fresh uniform points are simulated in closed form (`closed.cosine_kernel`, the validation's kernels)
with the operator spectrum the estimate describes (`model_spectrum`: (k + c)^(-2 beta) with the fitted beta and
shift, the kernel's own leading eigenvalues where they stand more than twice above that curve), the same
estimator is run on each, and their errors e = beta* - beta give the half-width |mean e| + z sd(e) on both sides
of the estimate (so it always holds it). Why: the estimate's spread shrinks with
N at rates from about 0.5 to 1.8 on the closed-form kernels (the window and the shift fit change with N), so no
single rate turns the spread of half-size subsamples into the spread at N. The previous rule
(`interval="subsample"`) did exactly that:

    beta_N +- ( z * sd(beta_b) / sqrt((N/b)^(2 tau) - 1)  +  |mean(beta_b) - beta_N| ),   tau = RATE = 1.75,

over random b = N/2 subsets refitting the shift; it under-covered beta 0.6 at N >= 400 (58-75%, where the rate is
about 0.8) and, on real eNTKs split into disjoint draws, its implied sd was 0.2-1.0x the spread over the draws.
Measured on both kinds of kernel, side by side: docs/results/efficiency/estimators.md. The simulated kernels assume
cosine-like eigenfunctions (the eigenvalues' fluctuation depends on them); on real eNTKs the parametric interval's
implied sd is checked against the spread over disjoint draws on the same page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from ..errors import KernelError
from .checks import bad, count
from .checks import level as check_level
from .closed import TERMS_PER_POINT, cosine_kernel, shifted_power
from .eig import FLOOR, Array, as_kernel, eigenvalues, log_spectra
from .result import Result

Interval = Literal["parametric", "subsample"]
INTERVALS: tuple[str, ...] = ("parametric", "subsample")

CHUNK = 2 * 10**7  # float64 entries of subsample matrices held at once (160 MB)
SHIFT_GRID = 120  # positive index shifts tried by the shift fit
RATE = 1.75  # the subsample interval's exponent tau: the estimate's sd taken to fall as n^(-tau) (module doc)
DRAWS = 40  # simulated kernels behind the default interval (each costs about one estimate at N)
SPIKE = 2.0  # a leading eigenvalue is simulated as the kernel's own when it stands this far above the fitted curve
PROGRESS_N = 1000  # a progress bar over the simulated kernels from this N (about a second each there)
MIN_SHIFT_POINTS = 8  # a shift is fitted only on windows of at least this many points (2 parameters, a spread test)


@dataclass
class BetaCI(Result):
    """The scale-matched beta, its window and its interval (low/high are None when there is none; `estimates` are
    the betas behind the interval: on the simulated kernels, or on the subsamples, each with its own shift)."""

    beta: float
    low: float | None
    high: float | None
    level: float
    k_min: int  # the window actually used, in the full spectrum
    k_max: int
    m_estimate: int  # subset size of the estimate (about N/2)
    m: int  # size of the interval's kernels: N (parametric) or the subsample size b
    draws: int  # simulated kernels (or subsamples) that gave an estimate
    inner_draws: int
    num_positive: int
    method: str = "scale-matched, shift-fitted"
    note: str = ""
    estimates: list[float] = field(default_factory=list)
    n: int = 0  # kernel size N (r = m_estimate / N)
    shift: float = 0.0  # fitted index shift c in mu_k = (k + c)^(-2 beta) (0: a pure power law on the window)
    points: list[float] = field(default_factory=list)  # matched points d_k / (2 log(1/r)), k = k_min..k_max
    fit_k_min: int = 0  # first k the fit used (k_min, or an octave or two later past a few large leading eigenvalues)
    interval: str = "parametric"  # how low/high were made: "parametric" (simulated kernels) or "subsample"

    def line(self) -> list[float]:
        """The fitted model through `points` on k = fit_k_min..k_max: beta log((k + c)/(r k + c)) / log(1/r) (flat
        at beta when c = 0)."""
        k = np.arange(self.fit_k_min or self.k_min, self.k_max + 1, dtype=np.float64)
        r = self.m_estimate / self.n if self.n else 0.5
        out: list[float] = (self.beta * np.log((k + self.shift) / (r * k + self.shift)) / math.log(1 / r)).tolist()
        return out

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


def matched_points(l_full: Array, l_sub: Array, r: float, a: int, b: int) -> Array:
    """d_k = log lambda^(m)_{r k} - log lambda^(N)_k for k = a..b, one row per spectrum (B, b - a + 1)."""
    k = np.arange(a, b + 1, dtype=np.float64)
    m = l_sub.shape[1]
    lo, t = _interp_weights(r * k, m)
    hi = np.minimum(lo + 1, m - 1)
    sub = (1 - t) * l_sub[:, lo] + t * l_sub[:, hi]
    out: Array = sub - l_full[:, a - 1:b]
    return out


def _shift_grid(r: float, a: int, b: int) -> Array:
    """Index shifts c tried by the shift fit: 0, negative down to -0.9 r a, positive up to 10 b (log-spaced)."""
    neg = -np.geomspace(0.9 * r * a, 0.01, 20)
    pos = np.geomspace(0.01, 10.0 * b, SHIFT_GRID)
    out: Array = np.concatenate([neg, [0.0], pos])
    return out


def _fit_window(d: Array, r: float, a: int, b: int, shift: bool) -> tuple[Array, Array, Array]:
    """(beta, c, weighted mean squared residual) per row on the points k = a..b (d has exactly these columns)."""
    k = np.arange(a, b + 1, dtype=np.float64)
    w = 1.0 / k
    cs = _shift_grid(r, a, b) if shift and b - a + 1 >= MIN_SHIFT_POINTS else np.zeros(1)
    g = np.log((k[None, :] + cs[:, None]) / (r * k[None, :] + cs[:, None]))  # (C, K)
    num = (d * w) @ g.T  # (B, C)
    den = (g * g) @ w  # (C,)
    beta = num / (2 * den)
    rss = ((d * d) @ w)[:, None] - 4 * beta * num + 4 * beta ** 2 * den  # sum w (d - 2 beta g)^2
    zero = int(np.argmin(np.abs(cs)))
    best = np.argmin(np.where(np.isfinite(rss), rss, np.inf), axis=1)
    rows = np.arange(len(d))
    keep = rss[rows, best] <= rss[:, zero] / 4  # spread (sd) halved
    pick = np.where(keep, best, zero)
    return beta[rows, pick], cs[pick], rss[rows, pick] / w.sum()


def fit_shift(d: Array, r: float, a: int, b: int, shift: bool = True) -> tuple[Array, Array, NDArray[np.int64]]:
    """(beta, c, first k fitted) per row of the matched points d (k = a..b): weighted (1/k) least squares of
    d_k = 2 beta log((k + c)/(r k + c)), the matched difference of a shifted power law mu_k = (k + c)^(-2 beta).

    The shift is kept only where it halves the weighted spread of the points about the fit (a pure power law keeps
    c = 0: its points are flat). With `shift`, the fit may also start one or two octaves later (k from 2a or 4a,
    while 4 points remain), whichever leaves the smallest mean squared residual: a few large leading eigenvalues
    (a spiked spectrum) distort the matched points up to k ~ (number of spikes) / r, which no shift models."""
    if not shift:
        beta, c, _ = _fit_window(d, r, a, b, False)
        return beta, c, np.full(len(d), a, dtype=np.int64)
    starts = [s for s in (a, 2 * a, 4 * a) if s == a or s + MIN_SHIFT_POINTS // 2 <= b]
    fits = [_fit_window(d[:, s - a:], r, s, b, True) for s in starts]
    res = np.stack([f[2] for f in fits])
    pick = np.argmin(np.where(np.isfinite(res), res, np.inf), axis=0)
    rows = np.arange(d.shape[0])
    out_b: Array = np.stack([f[0] for f in fits])[pick, rows]
    out_c: Array = np.stack([f[1] for f in fits])[pick, rows]
    return out_b, out_c, np.asarray(starts, dtype=np.int64)[pick]


def _statistic(l_full: Array, l_sub: Array, r: float, a: int, b: int, shift: bool = False) -> Array:
    """The matched estimate for each row: l_full (B, n) and the mean subset log spectra l_sub (B, m).
    shift=False: the plain scale-matched mean (the previous default); True: with a fitted index shift."""
    d = matched_points(l_full, l_sub, r, a, b)
    return fit_shift(d, r, a, b, shift)[0]


def _subsets(rng: np.random.Generator, n: int, m: int, shape: tuple[int, ...]) -> NDArray[np.int64]:
    """Random m-subsets of range(n) without replacement, one per leading index."""
    out: NDArray[np.int64] = np.argsort(rng.random((*shape, n)), axis=-1)[..., :m]
    return out


def _estimate(kk: Array, idx: NDArray[np.int64], inner: int, rng: np.random.Generator, a: int, b: int,
              floor: float, shift: bool = True) -> tuple[Array, Array, NDArray[np.int64], Array]:
    """The matched estimate on each subset idx[i] (all of size n): its spectrum against `inner` half-subsets.
    Returns (beta, shift c, first k fitted, matched points d) per subset."""
    n = idx.shape[1]
    m = _half(n)
    l_full = log_spectra(kk, idx, floor)
    pos = _subsets(rng, n, m, (idx.shape[0], inner))
    sub_idx = np.take_along_axis(idx[:, None, :], pos, axis=2).reshape(-1, m)
    l_sub = log_spectra(kk, sub_idx, floor).reshape(idx.shape[0], inner, m).mean(axis=1)
    d = matched_points(l_full, l_sub, m / n, a, b)
    beta, c, start = fit_shift(d, m / n, a, b, shift)
    return beta, c, start, d


def matched_beta(k: Any, k_min: int | None = None, k_max: int | None = None, draws: int = 100,
                 seed: int = 0, floor: float = FLOOR) -> tuple[float, int, int, int]:
    """The scale-matched beta of K (see the module doc): (beta, k_min, k_max, subset size m)."""
    est = subsample_ci(k, draws=0, inner_draws=draws, k_min=k_min, k_max=k_max, seed=seed, floor=floor)
    return est.beta, est.k_min, est.k_max, est.m_estimate


def subsample_ci(k: Any, m: int | None = None, draws: int = 200, level: float = 0.9, seed: int = 0,
                 k_min: int | None = None, k_max: int | None = None, inner_draws: int | None = None,
                 floor: float = FLOOR, lams: Array | None = None, shift: bool = True,
                 interval: Interval = "parametric") -> BetaCI:
    """beta (scale-matched, finite-N corrected, index shift fitted) with a symmetric interval at `level`;
    `shift=False` is the plain scale-matched mean (biased by > 0.3 on shifted power laws).

    `interval` (the module doc): "parametric" (default) simulates `draws` closed-form kernels of N points with the
    fitted spectrum and reads the estimate's spread and bias off them; "subsample" (the previous rule) scales the
    spread of `draws` refitted m-subsamples (`m` default about N/2) to N by a calibrated rate. 0 draws: no interval.
    `inner_draws`: the half-subsets behind each estimate (default 10000 // N within 20..100 for an estimate at N,
    fewer per subsample); eigenvalues below `floor` * lambda_1 count as zero; `lams`: K/N's eigenvalues if known."""
    kk = as_kernel(k)
    n = kk.shape[0]
    level = check_level(level)
    if interval not in INTERVALS:
        raise bad("interval", f"choose from {', '.join(INTERVALS)}, got {interval!r}")
    draws = count("draws", draws, 0)
    lams = eigenvalues(kk, floor=floor) if lams is None else lams
    n_pos = int((lams > 0).sum())
    a, b = matched_window(n, n_pos, k_min, k_max)
    if b < a:
        raise KernelError(f"too few positive eigenvalues for a decay fit: {n_pos} of N={n} (window k={a}..{b}); "
                          "use more samples")
    rng = np.random.default_rng(seed)
    d_full = count("inner_draws", inner_draws, 1) if inner_draws is not None else int(np.clip(10000 // n, 20, 100))
    betas, cs, starts, d = _estimate(kk, np.arange(n)[None, :], d_full, rng, a, b, floor, shift)
    beta, r = float(betas[0]), _half(n) / n
    if not math.isfinite(beta):
        raise KernelError(f"the half-subsets of the kernel have too few positive eigenvalues for the window k={a}..{b}")
    res = BetaCI(beta, None, None, level, a, b, _half(n), n, 0, 0, n_pos,
                 method="scale-matched, shift-fitted" if shift else "scale-matched", n=n, shift=float(cs[0]),
                 fit_k_min=int(starts[0]), points=(d[0] / (2 * math.log(1 / r))).tolist(), interval=interval)
    if m is not None and interval == "parametric":
        raise bad("m", "the subsample size applies to interval='subsample' only")
    size = _half(n) if m is None else count("m", m, 2)
    if m is not None and size >= n:
        raise bad("m", f"the subsample size must be below N={n}, got {m}")
    res.m = n if interval == "parametric" else size
    if draws == 0:
        res.note = "not requested (0 draws)"
        return res
    if interval == "parametric":
        return _parametric(res, lams, rng, d_full, k_min, k_max, floor, shift, draws)
    b_sub = min(b * size // n, (min(size, n_pos) // 2))
    r_sub = _half(size) / size
    a_sub = max(a, math.ceil(1 / r_sub - 1e-12))
    if b_sub < a_sub:
        res.note = f"subsets of {size} leave no fit window (N={n}, {n_pos} positive eigenvalues)"
        return res
    inner = inner_draws if inner_draws is not None else int(np.clip(4000 // size, 4, 20))
    per_chunk = max(1, CHUNK // (inner * _half(size) ** 2 + size ** 2))
    ests = []
    for start in range(0, draws, per_chunk):
        idx = _subsets(rng, n, size, (min(per_chunk, draws - start),))
        ests.append(_estimate(kk, idx, inner, rng, a_sub, b_sub, floor, shift)[0])
    est = np.concatenate(ests)
    est = est[np.isfinite(est)]
    res.inner_draws, res.draws, res.estimates = inner, int(len(est)), est.tolist()
    if len(est) < max(10, draws // 2):
        res.note = f"only {len(est)} of {draws} subsamples had enough positive eigenvalues"
        return res
    res.low, res.high = subsample_interval(beta, est, n, size, level)
    return res


def model_spectrum(lams: Array, est: BetaCI, terms: int) -> tuple[Array, float]:
    """The operator spectrum the parametric interval simulates: mu_k = (k + c)^(-2 beta) with the estimate's beta
    and shift c, and before the fit's first k the kernel's own eigenvalues (rescaled to the fitted curve over the
    window) where they stand more than SPIKE times above it, so that large leading eigenvalues are kept; `terms`
    terms and the tail sum. Eigenvalues below the floor are not simulated as zeros: on a fast decay they are the
    numerical floor of a full-rank kernel (simulating that rank hid the estimate's bias at beta 3), and the
    simulated kernels meet the same floor.
    Copying every leading eigenvalue above the curve made spikes of sampling noise: on pure power laws (beta 2,
    N = 100) the simulated estimates then read ~0.1 high and the interval was 4x the width that covers."""
    mu, tail = shifted_power(est.beta, est.shift, terms)
    s = est.fit_k_min or est.k_min
    k = np.arange(s, est.k_max + 1)
    k = k[(lams[k - 1] > 0) & np.isfinite(mu[k - 1])]
    scale = float(np.exp(np.mean(np.log(lams[k - 1]) - np.log(mu[k - 1]))))
    lead, curve = lams[:s - 1] / scale, np.nan_to_num(mu[:s - 1], nan=0.0)
    mu[:s - 1] = np.where(lead > SPIKE * curve, lead, curve)
    return mu, tail


def _parametric(res: BetaCI, lams: Array, rng: np.random.Generator, inner: int, k_min: int | None,
                k_max: int | None, floor: float, shift: bool, draws: int) -> BetaCI:
    """The parametric interval: the same estimator on `draws` closed-form kernels of N uniform points whose
    operator has the fitted spectrum (`model_spectrum`); their errors e = beta* - beta give the half-width
    |mean e| + z sd(e), on both sides of the estimate."""
    n = res.n
    mu, tail = model_spectrum(lams, res, TERMS_PER_POINT * n)
    est = []
    bar = tqdm(range(draws), desc=f"beta interval (N={n})", unit="kernel", leave=False, disable=n < PROGRESS_N)
    for _ in bar:
        sim = cosine_kernel(mu, tail, rng.uniform(0.0, 1.0, n))
        try:
            one = subsample_ci(sim, draws=0, seed=int(rng.integers(2**31)), k_min=k_min, k_max=k_max,
                               inner_draws=inner, floor=floor, shift=shift)
        except KernelError:
            continue
        if math.isfinite(one.beta):
            est.append(one.beta)
    res.inner_draws, res.draws, res.estimates = inner, len(est), est
    if res.num_positive < n:
        res.note = f"{res.num_positive} positive eigenvalues of N={n} (the rest below the floor)"
    if len(est) < max(10, draws // 2):
        res.note = f"only {len(est)} of {draws} simulated kernels gave an estimate"
        return res
    res.low, res.high = parametric_interval(res.beta, np.asarray(est), res.level)
    return res


def parametric_interval(beta: float, est: Array, level: float) -> tuple[float, float]:
    """beta -+ (|mean(est) - beta| + z sd(est)): the estimates `est` on kernels simulated at the fitted spectrum,
    whose truth is beta; their bias and spread are the estimate's (the interval always holds beta)."""
    z = NormalDist().inv_cdf((1 + level) / 2)
    half = abs(float(np.mean(est)) - beta) + z * float(np.std(est, ddof=1))
    return beta - half, beta + half


def subsample_interval(beta: float, est: Array, n: int, size: int, level: float, rate: float = RATE) -> tuple[float, float]:
    """The `level` interval of beta from the estimates `est` on random `size`-subsets (shift refitted in each).

    Spread: var(beta_b | sample) = s^2 (b^(-2 tau) - N^(-2 tau)) for an estimate whose sd falls as n^(-tau), so
    sd(beta_N) = sd(beta_b) / sqrt((N/b)^(2 tau) - 1); tau = 1/2 is the delete-d jackknife's sqrt(b/(N - b)).
    Bias: |mean(beta_b) - beta_N|, the change of the estimate's bias from b to N, added to both sides (the
    interval stays centred on beta_N). The module doc gives the calibration of `rate`."""
    z = NormalDist().inv_cdf((1 + level) / 2)
    half = z * float(np.std(est, ddof=1)) / math.sqrt((n / size) ** (2 * rate) - 1) + abs(float(np.mean(est)) - beta)
    return beta - half, beta + half


def estimate_beta(k: Any, *, draws: int = DRAWS, level: float = 0.9, seed: int = 0, floor: float = FLOOR,
                  interval: Interval = "parametric") -> BetaCI:
    """ntkft's beta of a kernel matrix K: the decay rate of its operator's eigenvalues, mu_k ~ k^(-2 beta),
    finite-N corrected (scale-matched, index shift fitted), with a `level` interval from `draws` kernels simulated
    at the fitted spectrum (`interval="subsample"`: the previous subsampling rule). The one headline estimate (CLI,
    reports, figures); the paper's and the window fit are descriptive. Bias and interval coverage on closed-form
    kernels and on real eNTKs: docs/results/efficiency/estimators.md (cost per call there too)."""
    return subsample_ci(k, draws=draws, level=level, seed=seed, floor=floor, interval=interval)
