"""Kernel ridge regression (ridge = 1/eta, the GD correspondence up to a factor 2), its k-fold CV,
and hold-out early stopping on the kernel GD path."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..spectrum.eig import as_kernel, eigh_desc
from .kgd import KernelGD


class KernelRidge:
    """f = f0 + K/N (K/N + lambda I)^{-1} (y - f0); predict from the unnormalised cross kernel."""

    def __init__(self, ridge: float = 1e-3) -> None:
        if ridge <= 0:
            raise ConfigError(f"ridge must be positive, got {ridge}")
        self.ridge = ridge

    def fit(self, k, y, f0=None) -> KernelRidge:
        k = as_kernel(k)
        self.n_ = k.shape[0]
        self.lams_, self.u_ = eigh_desc(k)
        self.f0_ = np.zeros(self.n_) if f0 is None else np.asarray(f0, dtype=np.float64)
        self.proj_ = self.u_.T @ (np.asarray(y, dtype=np.float64) - self.f0_)
        return self

    def filters(self) -> np.ndarray:
        return self.lams_ / (self.lams_ + self.ridge)

    def fitted(self) -> np.ndarray:
        return self.f0_ + self.u_ @ (self.filters() * self.proj_)

    def predict(self, k_cross, f0=None) -> np.ndarray:
        kc = np.asarray(k_cross, dtype=np.float64)
        c = self.u_ @ (self.proj_ / (self.lams_ + self.ridge)) / self.n_
        return (0 if f0 is None else np.asarray(f0, dtype=np.float64)) + kc @ c


def cv_ridge(k, y, ridges=None, folds: int = 5, seed: int = 0, f0=None) -> dict:
    """k-fold cross-validation of the ridge; returns the best ridge and the CV curve."""
    k = as_kernel(k)
    n = k.shape[0]
    if folds < 2 or folds > n:
        raise ConfigError(f"folds must be in [2, N={n}], got {folds}")
    y = np.asarray(y, dtype=np.float64)
    f0 = np.zeros(n) if f0 is None else np.asarray(f0, dtype=np.float64)
    top = np.linalg.eigvalsh(k / n)[-1]
    ridges = np.logspace(-6, 1, 29) * top if ridges is None else np.asarray(ridges, dtype=np.float64)
    perm = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(perm, folds)
    curve = np.zeros(len(ridges))
    for part in parts:
        tr = np.setdiff1d(perm, part)
        for i, lam in enumerate(ridges):
            m = KernelRidge(lam).fit(k[np.ix_(tr, tr)], y[tr], f0[tr])
            pred = m.predict(k[np.ix_(part, tr)], f0[part])
            curve[i] += np.sum((pred - y[part]) ** 2) / n
    best = int(np.argmin(curve))
    return {"ridge": float(ridges[best]), "eta": float(1 / ridges[best]), "ridges": ridges.tolist(),
            "cv_mse": curve.tolist()}


@dataclass
class HoldoutResult:
    best_t: int
    best_val_mse: float
    stopped_at: int
    val_curve: list[float]


def holdout_stop(k_train, y_train, k_val_train, y_val, step: float, t_max: int = 10000, patience: int = 10,
                 eval_every: int = 1, min_delta: float = 0.0, f0_train=None, f0_val=None) -> HoldoutResult:
    """Hold-out early stopping on the kernel GD path: evaluate every `eval_every` steps, stop after
    `patience` evaluations without an improvement larger than `min_delta`, report the best t."""
    gd = KernelGD(step=step).fit(k_train, y_train, f0_train)
    best_t, best, bad, curve, t = 0, np.inf, 0, [], 0
    while t <= t_max:
        pred = gd.predict(k_val_train, f0_val, t=t)
        mse = float(np.mean((pred - np.asarray(y_val, dtype=np.float64)) ** 2))
        curve.append(mse)
        if mse < best - min_delta:
            best, best_t, bad = mse, t, 0
        else:
            bad += 1
            if bad >= patience:
                break
        t += eval_every
    return HoldoutResult(best_t, best, t, curve)
