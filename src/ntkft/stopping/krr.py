"""Kernel ridge regression (ridge = 1/eta, the GD correspondence up to a factor 2), its k-fold CV,
and hold-out early stopping on the kernel GD path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..spectrum.checks import bad, count, positive, vector
from ..spectrum.eig import Array, as_kernel, eigenvalues, eigh_desc
from ..spectrum.result import Result
from .kgd import KernelGD, _cross


class KernelRidge:
    """f = f0 + K/N (K/N + lambda I)^{-1} (y - f0); predict from the unnormalised cross kernel."""

    def __init__(self, ridge: float = 1e-3) -> None:
        self.ridge = positive("ridge", ridge)

    def fit(self, k: Any, y: ArrayLike, f0: ArrayLike | None = None) -> KernelRidge:
        """Decompose K/N once and project the residual y - f0 on its eigenvectors."""
        kk = as_kernel(k)
        self.n_ = kk.shape[0]
        self.lams_, self.u_ = eigh_desc(kk)
        self.f0_ = np.zeros(self.n_) if f0 is None else vector(f0, self.n_, "f0")
        self.proj_ = self.u_.T @ (vector(y, self.n_, "y") - self.f0_)
        return self

    def filters(self) -> Array:
        """lambda_i / (lambda_i + ridge)."""
        out: Array = self.lams_ / (self.lams_ + self.ridge)
        return out

    def fitted(self) -> Array:
        """The fit on the training inputs."""
        out: Array = self.f0_ + self.u_ @ (self.filters() * self.proj_)
        return out

    def predict(self, k_cross: Any, f0: ArrayLike | None = None) -> Array:
        """The fit on new inputs from K(X_new, X_train) (unnormalised) and f0(X_new)."""
        kc = _cross(k_cross, self.n_)
        c = self.u_ @ (self.proj_ / (self.lams_ + self.ridge)) / self.n_
        base = np.zeros(kc.shape[0]) if f0 is None else vector(f0, kc.shape[0], "f0")
        out: Array = base + kc @ c
        return out


@dataclass
class RidgeCV(Result):
    """k-fold cross-validation of the ridge: the best ridge, its GD time eta = 1/ridge, and the CV curve."""

    ridge: float
    eta: float
    ridges: list[float]
    cv_mse: list[float]
    folds: int


def cv_ridge(k: Any, y: ArrayLike, ridges: ArrayLike | None = None, folds: int = 5, seed: int = 0,
             f0: ArrayLike | None = None) -> RidgeCV:
    """k-fold cross-validation of the ridge; returns the best ridge and the CV curve."""
    kk = as_kernel(k)
    n = kk.shape[0]
    folds = count("folds", folds, 2)
    if folds > n:
        raise bad("folds", f"must be in [2, N={n}], got {folds}")
    yv = vector(y, n, "y")
    f0v = np.zeros(n) if f0 is None else vector(f0, n, "f0")
    top = float(eigenvalues(kk)[0])
    grid = np.logspace(-6, 1, 29) * top if ridges is None else np.asarray(ridges, dtype=np.float64).reshape(-1)
    if len(grid) == 0 or not np.isfinite(grid).all() or (grid <= 0).any():
        raise bad("ridges", "must be a non-empty list of finite numbers > 0")
    perm = np.random.default_rng(seed).permutation(n)
    curve = np.zeros(len(grid))
    for part in np.array_split(perm, folds):
        tr = np.setdiff1d(perm, part)
        for i, lam in enumerate(grid):
            m = KernelRidge(float(lam)).fit(kk[np.ix_(tr, tr)], yv[tr], f0v[tr])
            pred = m.predict(kk[np.ix_(part, tr)], f0v[part])
            curve[i] += np.sum((pred - yv[part]) ** 2) / n
    best = int(np.argmin(curve))
    return RidgeCV(float(grid[best]), float(1 / grid[best]), grid.tolist(), curve.tolist(), folds)


@dataclass
class HoldoutResult(Result):
    """Hold-out early stopping on the kernel GD path: the best step, its validation MSE, where it stopped."""

    best_t: int
    best_val_mse: float
    stopped_at: int
    val_curve: list[float] = field(default_factory=list)


def holdout_stop(k_train: Any, y_train: ArrayLike, k_val_train: Any, y_val: ArrayLike, step: float,
                 t_max: int = 10000, patience: int = 10, eval_every: int = 1, min_delta: float = 0.0,
                 f0_train: ArrayLike | None = None, f0_val: ArrayLike | None = None) -> HoldoutResult:
    """Hold-out early stopping on the kernel GD path: evaluate every `eval_every` steps, stop after
    `patience` evaluations without an improvement larger than `min_delta`, report the best t."""
    t_max, patience, eval_every = count("t_max", t_max, 0), count("patience", patience), count("eval_every", eval_every)
    gd = KernelGD(step=step).fit(k_train, y_train, f0_train)
    kv = _cross(k_val_train, gd.n_)
    yv = vector(y_val, kv.shape[0], "y_val")
    best_t, best, bad_evals, curve, t = 0, np.inf, 0, [], 0
    while t <= t_max:
        mse = float(np.mean((gd.predict(kv, f0_val, t=t) - yv) ** 2))
        curve.append(mse)
        if mse < best - min_delta:
            best, best_t, bad_evals = mse, t, 0
        else:
            bad_evals += 1
            if bad_evals >= patience:
                break
        t += eval_every
    return HoldoutResult(best_t, float(best), t, curve)
