"""Kernel gradient descent on the normalised kernel K/N, in closed form in its eigenbasis.

f^t(X) = f0 + U diag(1 - prod_{tau<t}(1 - alpha_tau lambda_i)) U^T (y - f0)   (THEORY.md sec. 5);
out of sample f^t(x) = f0(x) + sum_j c_j K(x, X_j) with c = (1/N) U diag(q_t(lambda)/lambda) U^T (y - f0).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, KernelError
from ..spectrum.eig import as_kernel, eigh_desc


def step_schedule(steps, t_max: int) -> np.ndarray:
    """alpha_0..alpha_{t_max-1} from a constant or a non-increasing sequence."""
    if np.isscalar(steps):
        alphas = np.full(t_max, float(steps))
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


def _vector(y, n: int, name: str) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.shape[0] != n:
        raise ConfigError(f"{name} has {y.shape[0]} values but the kernel is {n} x {n}")
    if not np.isfinite(y).all():
        raise ConfigError(f"{name} contains NaN or inf")
    return y


class KernelGD:
    """Early-stopped kernel gradient descent, scikit-learn style: fit(K, y[, f0]) then predict(K_cross)."""

    def __init__(self, step: float | None = None, t: int = 100) -> None:
        self.step, self.t = step, t

    def fit(self, k, y, f0=None) -> KernelGD:
        """K: the unnormalised N x N Gram matrix of the training inputs; f0: warm start f_PT(X) or None."""
        k = as_kernel(k)
        n = k.shape[0]
        self.y_ = _vector(y, n, "y")
        self.f0_ = np.zeros(n) if f0 is None else _vector(f0, n, "f0")
        self.lams_, self.u_ = eigh_desc(k)
        self.n_ = n
        if self.step is None:
            self.step = 1.0 / max(self.lams_[0], 1e-300) if self.lams_[0] > 1 else 1.0
        if self.step > min(1.0, 1.0 / self.lams_[0]) * (1 + 1e-9):
            raise ConfigError(f"step {self.step:g} exceeds min(1, 1/lambda_1) = {min(1.0, 1 / self.lams_[0]):g}; "
                              "gradient descent would not be stable")
        self.proj_ = self.u_.T @ (self.y_ - self.f0_)
        return self

    def filters(self, t: int | None = None, steps=None) -> np.ndarray:
        """q_t(lambda_i) = 1 - prod_{tau < t} (1 - alpha_tau lambda_i)."""
        t = self.t if t is None else t
        alphas = step_schedule(self.step if steps is None else steps, t)
        if np.isscalar(self.step) and steps is None:
            return 1.0 - (1.0 - self.step * self.lams_) ** t
        return 1.0 - np.prod(1.0 - alphas[:, None] * self.lams_[None, :], axis=0)

    def fitted(self, t: int | None = None, steps=None) -> np.ndarray:
        """f^t on the training inputs."""
        return self.f0_ + self.u_ @ (self.filters(t, steps) * self.proj_)

    def coef(self, t: int | None = None, steps=None) -> np.ndarray:
        """c with f^t(x) = f0(x) + sum_j c_j K(x, X_j) (unnormalised K)."""
        q = self.filters(t, steps)
        ratio = np.divide(q, self.lams_, out=np.zeros_like(q), where=self.lams_ > 0)
        return self.u_ @ (ratio * self.proj_) / self.n_

    def predict(self, k_cross, f0=None, t: int | None = None, steps=None) -> np.ndarray:
        """f^t on new inputs from K(X_new, X_train) (unnormalised) and f0(X_new)."""
        kc = np.asarray(k_cross.detach().numpy() if hasattr(k_cross, "detach") else k_cross, dtype=np.float64)
        if kc.ndim != 2 or kc.shape[1] != self.n_:
            raise ConfigError(f"cross kernel must be (M, {self.n_}), got {kc.shape}")
        if not np.isfinite(kc).all():
            raise KernelError("cross kernel contains NaN or inf")
        base = np.zeros(kc.shape[0]) if f0 is None else _vector(f0, kc.shape[0], "f0")
        return base + kc @ self.coef(t, steps)

    def path_mse(self, t_max: int, target=None) -> np.ndarray:
        """||f^t - target||_N^2 for t = 0..t_max (target defaults to y) with a constant step."""
        target = self.y_ if target is None else _vector(target, self.n_, "target")
        tp = self.u_.T @ (target - self.f0_)
        ts = np.arange(t_max + 1)
        q = 1.0 - (1.0 - self.step * self.lams_[None, :]) ** ts[:, None]
        resid = q * self.proj_[None, :] - tp[None, :]
        # the part of target outside the eigenbasis span is zero (U is complete)
        return (resid ** 2).sum(1) / self.n_


def iterate_gd(k, y, steps, t: int, f0=None) -> np.ndarray:
    """Explicit iteration f <- f + alpha_t (K/N)(y - f): the naive reference for the closed form."""
    k = as_kernel(k)
    n = k.shape[0]
    kn = k / n
    f = np.zeros(n) if f0 is None else np.asarray(f0, dtype=np.float64).copy()
    y = np.asarray(y, dtype=np.float64)
    for a in step_schedule(steps, t):
        f = f + a * kn @ (y - f)
    return f
