"""Predictors of fine-tuning success read off one model before any fine-tuning.

- `kta`: centred kernel-target alignment (Cortes, Mohri & Rostamizadeh 2012) of the eNTK with the targets.
- `logme`: LogME (You et al. 2021), the maximised Bayesian evidence of a linear model on the features, per sample.
- `hscore`: H-score (Bao et al. 2019) in transformer-ranker's Ledoit-Wolf shrinkage form (Ibrahim et al. 2022).
- `predicted_curve`: the linearised model's own learning curve: hold-out early-stopped kernel gradient descent on
  the eNTK (`ntkft.stopping.KernelGD`) for random training subsets of each size, scored on the pool rows the subset
  did not use, beside the constant predictor on the same rows.

Numpy in, numbers/dataclasses out; no model or task code here (the callers compute kernels and features).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import ConfigError, DataError
from ..spectrum.checks import bad, count
from ..spectrum.eig import Array, as_kernel
from ..stopping import KernelGD

LOGME_TOL = 1e-8  # relative change of alpha/beta at which the fixed point counts as converged
LOGME_MAX_ITER = 1000
LOGME_EPS = 1e-5  # the published code's guard in the fixed point's denominators (a perfect fit would divide by 0)
T_GRID = 80  # kernel GD times tried by the hold-out rule (log-spaced from 1 step to convergence, plus t = 0)


def _matrix(x: Any, name: str, rows: int | None = None) -> Array:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] < 2 or (rows is not None and arr.shape[0] != rows):
        want = f"{rows} rows" if rows is not None else "a 2-D array with >= 2 rows"
        raise bad(name, f"must be {want}, got shape {np.shape(x)}")
    if not np.isfinite(arr).all():
        raise bad(name, "contains NaN or inf")
    return arr


def _labels(y: ArrayLike, n: int) -> tuple[NDArray[np.int64], NDArray[Any]]:
    """Integer class codes 0..C-1 of a label vector, and the class values in code order."""
    arr = np.asarray(y).reshape(-1)
    if arr.shape[0] != n:
        raise bad("y", f"has {arr.shape[0]} labels for {n} rows")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise bad("y", "contains NaN or inf")
    classes, codes = np.unique(arr, return_inverse=True)
    return codes.astype(np.int64), classes


def one_hot(y: ArrayLike, n: int | None = None) -> Array:
    """(n, C) one-hot matrix of the labels (classes in sorted order)."""
    arr = np.asarray(y).reshape(-1)
    codes, classes = _labels(arr, len(arr) if n is None else n)
    out: Array = np.eye(len(classes))[codes]
    return out


# ---------------------------------------------------------------- kernel-target alignment

def kta(k: Any, y: ArrayLike, *, classification: bool = False) -> float:
    """Centred alignment <HKH, H Y Y^T H>_F / (||HKH||_F ||H Y Y^T H||_F), H = I - 11^T/n, in [-1, 1].

    y: (n,) or (n, C) numeric targets; `classification=True` one-hot encodes a label vector first."""
    kk = as_kernel(k)
    n = kk.shape[0]
    yy = one_hot(y, n) if classification else _matrix(y, "y", n)
    kc = kk - kk.mean(0, keepdims=True)
    kc = kc - kc.mean(1, keepdims=True)
    yc = yy - yy.mean(0, keepdims=True)
    # <Kc, Yc Yc^T> = tr(Yc^T Kc Yc); ||Yc Yc^T||_F = ||Yc^T Yc||_F
    num = float(np.trace(yc.T @ kc @ yc))
    den = float(np.linalg.norm(kc) * np.linalg.norm(yc.T @ yc))
    if den == 0:
        raise DataError("kta: the centred kernel or the centred targets are zero (constant targets?)")
    return num / den


# ---------------------------------------------------------------- LogME

def _logme_column(s2: Array, proj2: Array, rss_out: float, n: int, d: int) -> float:
    """LogME of one target column: the published fixed point for alpha (prior) and beta (noise precision).

    s2: squared singular values of F (length r = min(n, d)); proj2: (u_i^T y)^2; rss_out: ||y||^2 - sum proj2
    (the part of y outside F's column space). Returns log p(y | F, alpha*, beta*) / n."""
    alpha, beta = 1.0, 1.0
    for _ in range(LOGME_MAX_ITER):
        gamma = float(np.sum(beta * s2 / (alpha + beta * s2)))
        m2 = float(np.sum(beta ** 2 * s2 * proj2 / (alpha + beta * s2) ** 2))  # ||m||^2, m the posterior mean
        res = float(np.sum(alpha ** 2 * proj2 / (alpha + beta * s2) ** 2)) + rss_out  # ||F m - y||^2
        new_alpha = gamma / (m2 + LOGME_EPS)
        new_beta = (n - gamma) / (res + LOGME_EPS)
        done = abs(new_alpha / new_beta - alpha / beta) <= LOGME_TOL * alpha / beta
        alpha, beta = new_alpha, new_beta
        if done:
            break
    m2 = float(np.sum(beta ** 2 * s2 * proj2 / (alpha + beta * s2) ** 2))
    res = float(np.sum(alpha ** 2 * proj2 / (alpha + beta * s2) ** 2)) + rss_out
    # log|A| with A = alpha I_d + beta F^T F: d - r eigenvalues equal alpha
    logdet = float(np.sum(np.log(alpha + beta * s2))) + (d - len(s2)) * math.log(alpha)
    ev = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - beta / 2 * res - alpha / 2 * m2
          - logdet / 2 - n / 2 * math.log(2 * math.pi))
    return ev / n


def logme(f: Any, y: ArrayLike, *, classification: bool) -> float:
    """LogME (You et al. 2021): the log evidence of Bayesian linear regression y = F w + noise, w ~ N(0, 1/alpha),
    noise ~ N(0, 1/beta), maximised over alpha and beta by the published fixed point, divided by n, averaged over
    target columns (the one-hot columns of the labels when `classification`). Higher = more transferable."""
    feats = _matrix(f, "F")
    n, d = feats.shape
    yy = one_hot(y, n) if classification else _matrix(y, "y", n)
    u, s, _ = np.linalg.svd(feats, full_matrices=False)
    s2 = s ** 2
    proj = u.T @ yy
    scores = [_logme_column(s2, proj[:, j] ** 2, float(yy[:, j] @ yy[:, j] - proj[:, j] @ proj[:, j]), n, d)
              for j in range(yy.shape[1])]
    return float(np.mean(scores))


# ---------------------------------------------------------------- H-score

def hscore(f: Any, y: ArrayLike) -> float:
    """H-score tr(cov(f)^-1 cov(E[f | y])) (Bao et al. 2019) with transformer-ranker's shrinkage: the feature
    covariance shrunk towards a multiple of I by the Ledoit-Wolf weight, the class-mean covariance scaled by
    (1 - shrinkage). Classification labels only. Higher = more transferable."""
    x = _matrix(f, "F")
    n, d = x.shape
    codes, classes = _labels(y, n)
    if len(classes) < 2:
        raise DataError("hscore: needs at least 2 classes")
    x = x - x.mean(0, keepdims=True)
    cov = x.T @ x / n
    sq = x ** 2
    diag = sq.sum(0) / n
    mu = float(diag.sum() / d)
    beta_ = float((sq.T @ sq).sum() / n)
    delta_ = float((cov ** 2).sum())
    b = (beta_ - delta_) / (d * n)
    dl = (delta_ - 2 * mu * float(diag.sum()) + d * mu ** 2) / d
    shrink = float(np.clip(b / dl, 0.0, 1.0)) if dl > 0 else 1.0
    covf = (1 - shrink) * cov + shrink * mu * np.eye(d)
    means = np.stack([x[codes == c].mean(0) * math.sqrt(float((codes == c).sum())) for c in range(len(classes))])
    covg = means.T @ means / (n - 1)
    return float(np.trace(np.linalg.pinv(covf, rcond=1e-15) @ ((1 - shrink) * covg)))


# ---------------------------------------------------------------- the eNTK's predicted learning curve

@dataclass
class PredictedCurve:
    """Test metric of hold-out early-stopped kernel GD on the eNTK per training size: mean over subsets, 5-95%
    interval over subsets, and the constant predictor (training mean / majority class) on the same rows."""

    sizes: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    baseline: list[float]
    metric: str  # "mse" (regression) or "error" (classification: 1 - accuracy)
    n_val: list[int] = field(default_factory=list)  # validation rows per size
    t_stop: list[float] = field(default_factory=list)  # median stopping time (GD steps) over subsets

    def to_dict(self) -> dict[str, Any]:
        """Fields as JSON-ready values."""
        return asdict(self)


def _val_rows(n: int, val_frac: float, min_val: int, outside: bool) -> int:
    want = max(min_val, math.ceil(val_frac * n))
    return want if outside else min(want, n // 2)


def _score(pred: Array, target: Array, classification: bool) -> float:
    """MSE over rows and columns (regression) or the error rate of the argmax (classification, one-hot target)."""
    if classification:
        return float(np.mean(pred.argmax(1) != target.argmax(1)))
    return float(np.mean((pred - target) ** 2))


def _filters(gd: KernelGD, t: int) -> Array:
    """q_t(lambda) = 1 - (1 - step lambda)^t without materialising t steps (KernelGD.filters' constant-step case)."""
    if t == 0:
        return np.zeros_like(gd.lams_)
    with np.errstate(divide="ignore"):
        out: Array = -np.expm1(t * np.log1p(-float(gd.step or 1.0) * gd.lams_))
    return out


def _times(gd: KernelGD) -> list[int]:
    """t = 0 and T_GRID log-spaced steps up to the time at which the smallest kept eigen-direction has converged."""
    pos = gd.lams_[gd.lams_ > 0]
    step = float(gd.step or 1.0)
    t_max = min(10.0 / (step * float(pos[-1])), 1e12) if len(pos) else 1.0
    grid = np.unique(np.round(np.geomspace(1, max(t_max, 2.0), T_GRID)).astype(np.int64))
    return [0, *grid.tolist()]


def _one_subset(kk: Array, yy: Array, tr: NDArray[np.int64], va: NDArray[np.int64], te: NDArray[np.int64],
                classification: bool, times: Sequence[int] | None,
                start: Array | None = None) -> tuple[float, float, float]:
    """(test metric at the hold-out stop, constant predictor's test metric, stopping time) for one split; kernel GD
    starts at the training mean, or with `start` at the model's own step-0 function (`predicted_curve`)."""
    f0 = yy[tr].mean(0)
    ff = np.broadcast_to(f0, yy.shape) if start is None else f0 + (start - start[tr].mean(0)) * yy[tr].std(0)
    gd = KernelGD().fit(kk[np.ix_(tr, tr)], yy[tr, 0], f0=ff[tr, 0])
    proj = gd.u_.T @ (yy[tr] - ff[tr])  # all target columns on the one eigenbasis
    kvu = kk[np.ix_(va, tr)] @ gd.u_ / len(tr)
    ktu = kk[np.ix_(te, tr)] @ gd.u_ / len(tr)
    inv = np.divide(1.0, gd.lams_, out=np.zeros_like(gd.lams_), where=gd.lams_ > 0)
    best: tuple[float, float] = (np.inf, np.inf)
    best_t = 0
    for t in (_times(gd) if times is None else times):
        coef = (_filters(gd, t) * inv)[:, None] * proj
        pv = ff[va] + kvu @ coef
        key = (_score(pv, yy[va], classification), float(np.mean((pv - yy[va]) ** 2)))
        if key < best:
            best, best_t = key, t
    coef = (_filters(gd, best_t) * inv)[:, None] * proj
    test = _score(ff[te] + ktu @ coef, yy[te], classification)
    if classification:
        const = np.zeros_like(f0)
        const[int(np.argmax(f0))] = 1.0  # majority class of the training rows
        base = _score(np.broadcast_to(const, yy[te].shape), yy[te], True)
    else:
        base = _score(np.broadcast_to(f0, yy[te].shape), yy[te], False)
    return test, base, float(best_t)


def predicted_curve(k: Any, y: ArrayLike, sizes: Sequence[int], *, n_subsets: int = 30, classification: bool = False,
                    seed: int = 0, val_frac: float = 0.25, min_val: int = 32, val_outside: bool = False,
                    times: Sequence[int] | None = None, start: ArrayLike | None = None) -> PredictedCurve:
    """The eNTK's learning curve: for each size n, `n_subsets` random n-row subsets of the pool (the N rows of K);
    kernel GD on K/n_train from the training mean (step 1/lambda_1, `KernelGD`'s default), stopped at the time
    (on a log grid) with the smallest validation error; scored on every pool row outside the subset.

    Validation rows: max(min_val, ceil(val_frac n)) rows taken from the subset (at most n/2, so small sizes get
    fewer; fine-tuning's own split), or with `val_outside` drawn from the pool beside the n training rows (the
    experiment's ">= 32 validation rows at every size"). y: (N,) or (N, C) targets, or labels with
    `classification` (one-hot targets, metric = error rate of the argmax; ties in validation error go to the
    smaller validation MSE, then the earlier time). `times`: the GD steps the hold-out rule chooses from (default
    t = 0 and T_GRID log-spaced steps up to convergence). Subset i of a size is `rng.permutation(N)` (rng seeded
    once with `seed`, sizes in order): validation rows first, then training rows, the rest scored.

    `start` (regression): the model's raw step-0 outputs g_0 on the N rows, (N,) or (N, C) in standardised target
    units. Fine-tuning (finetune's default: standardised targets, the head's bias set so the step-0 model averages
    the training mean) starts at f_0(x) = mean(y) + sd(y) (g_0(x) - mean(g_0)) over each subset's training rows, not
    at the constant: the new head's random projection adds a spread that can be as large as the targets' own (SmolLM2
    cuts, whose hidden states have large norms). With `start`, kernel GD runs from that f_0: the linearised model's
    own curve. Without it, from the training mean (the eNTK's curve for a centred start)."""
    kk = as_kernel(k)
    n_pool = kk.shape[0]
    yy = one_hot(y, n_pool) if classification else _matrix(y, "y", n_pool)
    s0: Array | None = None
    if start is not None:
        if classification:
            raise bad("start", "the model's own start is for regression (logits do not map onto the one-hot targets "
                      "the classification curve regresses on)")
        s0 = _matrix(start, "start", n_pool)
        if s0.shape[1] != yy.shape[1]:
            raise bad("start", f"has {s0.shape[1]} columns, the targets {yy.shape[1]}")
    n_subsets = count("n_subsets", n_subsets, 1)
    min_val = count("min_val", min_val, 1)
    if isinstance(val_frac, bool) or not 0 < float(val_frac) < 1:
        raise bad("val_frac", f"must be in (0, 1), got {val_frac!r}")
    sz = [count("sizes", int(s) if isinstance(s, np.integer) else s, 2) for s in sizes]
    if times is not None and (not times or any(int(t) < 0 for t in times)):
        raise bad("times", "must be a non-empty list of steps >= 0")
    if not sz:
        raise bad("sizes", "needs at least one size")
    rng = np.random.default_rng(seed)
    out = PredictedCurve([], [], [], [], [], "error" if classification else "mse")
    for n in sz:
        nv = _val_rows(n, val_frac, min_val, val_outside)
        used = n + nv if val_outside else n
        if n - (0 if val_outside else nv) < 1 or used > n_pool - 1:
            raise ConfigError(f"sizes: {n} training rows (+ {nv} validation rows) leave no test rows in a pool of "
                              f"{n_pool}")
        tests, bases, ts = [], [], []
        for _ in range(n_subsets):
            perm = rng.permutation(n_pool)
            sub, te = perm[:used], perm[used:]
            va, tr = sub[:nv], sub[nv:]
            a, b, t = _one_subset(kk, yy, tr, va, te, classification, times, s0)
            tests.append(a)
            bases.append(b)
            ts.append(t)
        arr = np.asarray(tests)
        out.sizes.append(n)
        out.mean.append(float(arr.mean()))
        out.low.append(float(np.quantile(arr, 0.05)))
        out.high.append(float(np.quantile(arr, 0.95)))
        out.baseline.append(float(np.mean(bases)))
        out.n_val.append(nv)
        out.t_stop.append(float(np.median(ts)))
    return out
