"""Kernel gradient descent on the normalised kernel K/N, in closed form in its eigenbasis.

f^t(X) = f0 + U diag(1 - prod_{tau<t}(1 - alpha_tau lambda_i)) U^T (y - f0)   (docs/theory.md sec. 5);
out of sample f^t(x) = f0(x) + sum_j c_j K(x, X_j) with c = (1/N) U diag(q_t(lambda)/lambda) U^T (y - f0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import ConfigError, KernelError
from ..spectrum.checks import count, positive, vector
from ..spectrum.eig import Array, as_kernel, eigh_desc

Steps = float | Sequence[float] | Array


def step_schedule(steps: Steps, t_max: int) -> Array:
    """alpha_0..alpha_{t_max-1} from a constant or a non-increasing sequence."""
    t_max = count("t", t_max, 0)
    if np.isscalar(steps):
        alphas: Array = np.full(t_max, positive("step", steps))
    else:
        alphas = np.asarray(steps, dtype=np.float64)
        if len(alphas) < t_max:
            raise ConfigError(f"step schedule has {len(alphas)} steps, need {t_max}")
        alphas = alphas[:t_max]
        if np.any(np.diff(alphas) > 1e-15):
            raise ConfigError("step sizes must be non-increasing")
    if np.any(alphas <= 0) or not np.isfinite(alphas).all():
        raise ConfigError("step sizes must be positive and finite")
    return alphas


def _cross(k_cross: Any, n: int) -> Array:
    kc = np.asarray(k_cross.detach().cpu().double().numpy() if hasattr(k_cross, "detach") else k_cross,
                    dtype=np.float64)
    if kc.ndim != 2 or kc.shape[1] != n:
        raise ConfigError(f"cross kernel must be (M, {n}), got {kc.shape}")
    if not np.isfinite(kc).all():
        raise KernelError("cross kernel contains NaN or inf")
    return kc


class KernelGD:
    """Early-stopped kernel gradient descent, scikit-learn style: fit(K, y[, f0]) then predict(K_cross)."""

    def __init__(self, step: float | None = None, t: int = 100) -> None:
        self.step = None if step is None else positive("step", step)
        self.t = count("t", t, 0)

    def fit(self, k: Any, y: ArrayLike, f0: ArrayLike | None = None) -> KernelGD:
        """K: the unnormalised N x N Gram matrix of the training inputs; f0: warm start f_PT(X) or None."""
        kk = as_kernel(k)
        n = kk.shape[0]
        self.y_ = vector(y, n, "y")
        self.f0_ = np.zeros(n) if f0 is None else vector(f0, n, "f0")
        self.lams_, self.u_ = eigh_desc(kk)
        self.n_ = n
        top = float(self.lams_[0])
        if top <= 0:
            raise KernelError("kernel has no positive eigenvalue")
        if self.step is None:
            self.step = 1.0 / top if top > 1 else 1.0
        if self.step > min(1.0, 1.0 / top) * (1 + 1e-9):
            raise ConfigError(f"step {self.step:g} exceeds min(1, 1/lambda_1) = {min(1.0, 1 / top):g}; "
                              "gradient descent would not be stable")
        self.proj_ = self.u_.T @ (self.y_ - self.f0_)
        return self

    def _step(self) -> float:
        if self.step is None:
            raise ConfigError("call fit() before using the fitted path")
        return self.step

    def filters(self, t: int | None = None, steps: Steps | None = None) -> Array:
        """q_t(lambda_i) = 1 - prod_{tau < t} (1 - alpha_tau lambda_i)."""
        t = self.t if t is None else t
        if steps is None:
            step_schedule(self._step(), t)
            out: Array = 1.0 - (1.0 - self._step() * self.lams_) ** t
            return out
        alphas = step_schedule(steps, t)
        out = 1.0 - np.prod(1.0 - alphas[:, None] * self.lams_[None, :], axis=0)
        return out

    def fitted(self, t: int | None = None, steps: Steps | None = None) -> Array:
        """f^t on the training inputs."""
        out: Array = self.f0_ + self.u_ @ (self.filters(t, steps) * self.proj_)
        return out

    def coef(self, t: int | None = None, steps: Steps | None = None) -> Array:
        """c with f^t(x) = f0(x) + sum_j c_j K(x, X_j) (unnormalised K)."""
        q = self.filters(t, steps)
        ratio = np.divide(q, self.lams_, out=np.zeros_like(q), where=self.lams_ > 0)
        out: Array = self.u_ @ (ratio * self.proj_) / self.n_
        return out

    def predict(self, k_cross: Any, f0: ArrayLike | None = None, t: int | None = None,
                steps: Steps | None = None) -> Array:
        """f^t on new inputs from K(X_new, X_train) (unnormalised) and f0(X_new)."""
        kc = _cross(k_cross, self.n_)
        base = np.zeros(kc.shape[0]) if f0 is None else vector(f0, kc.shape[0], "f0")
        out: Array = base + kc @ self.coef(t, steps)
        return out

    def path_mse(self, t_max: int, target: ArrayLike | None = None) -> Array:
        """||f^t - target||_N^2 for t = 0..t_max (target defaults to y) with a constant step."""
        tgt = self.y_ if target is None else vector(target, self.n_, "target")
        tp = self.u_.T @ (tgt - self.f0_)
        ts = np.arange(count("t_max", t_max, 0) + 1)
        q = 1.0 - (1.0 - self._step() * self.lams_[None, :]) ** ts[:, None]
        resid = q * self.proj_[None, :] - tp[None, :]
        # the part of target outside the eigenbasis span is zero (U is complete)
        out: Array = (resid ** 2).sum(1) / self.n_
        return out


def iterate_gd(k: Any, y: ArrayLike, steps: Steps, t: int, f0: ArrayLike | None = None) -> Array:
    """Explicit iteration f <- f + alpha_t (K/N)(y - f): the naive reference for the closed form."""
    kk = as_kernel(k)
    n = kk.shape[0]
    kn = kk / n
    f = np.zeros(n) if f0 is None else vector(f0, n, "f0").copy()
    yv = vector(y, n, "y")
    for a in step_schedule(steps, t):
        f = f + a * kn @ (yv - f)
    return f
