"""The data-dependent stopping rule of Raskutti, Wainwright & Yu (2014), eq 4-6, THEORY.md sec. 5.

Local empirical Rademacher complexity R_K(eps) = sqrt((1/N) sum_i min(lambda_i, eps^2)) of K/N.
The rule fires at the first t with R_K(1/sqrt(eta_t)) > R / (2 e sigma eta_t), equivalently
Phi(eta_t) > R^2 / (4 e^2 sigma^2) with Phi(eta) = (eta/N) sum_i min(eta lambda_i, 1) increasing;
eta* = Phi^{-1}(that) and T_hat = max{t : eta_t <= eta*}. The critical radius solves
R_K(eps) = eps^2 R / (2 e sigma) (RWY's unit-ball rule rescaled to a ball of radius R), and
eps_hat^2 = 1 / eta*. Bound: ||f^T_hat - f*||_N^2 <= 12 R^2 eps_hat^2.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConfigError, KernelError
from ..spectrum.eig import as_kernel, eigh_desc


def rademacher(lams, eps) -> np.ndarray:
    """R_K(eps) for the eigenvalues of K/N."""
    lams = np.asarray(lams, dtype=np.float64)
    eps = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    return np.sqrt(np.minimum(lams[None, :], eps[:, None] ** 2).sum(1) / len(lams))


def phi(lams, eta) -> np.ndarray:
    lams = np.asarray(lams, dtype=np.float64)
    eta = np.atleast_1d(np.asarray(eta, dtype=np.float64))
    return eta / len(lams) * np.minimum(eta[:, None] * lams[None, :], 1.0).sum(1)


def eta_star(lams, radius: float, sigma: float) -> float:
    """The eta at which Phi(eta) = R^2 / (4 e^2 sigma^2) (Phi is continuous and increasing)."""
    lams = np.asarray(lams, dtype=np.float64)
    if radius <= 0 or sigma <= 0:
        raise ConfigError(f"radius R and sigma must be positive (R={radius}, sigma={sigma})")
    if not (lams > 0).any():
        raise KernelError("kernel has no positive eigenvalue")
    thr = radius ** 2 / (4 * math.e ** 2 * sigma ** 2)
    lo, hi = 0.0, 1.0
    while phi(lams, hi)[0] <= thr:
        hi *= 2
        if hi > 1e300:
            raise KernelError("stopping threshold never reached")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if phi(lams, mid)[0] <= thr else (lo, mid)
    return hi


def critical_radius(lams, radius: float, sigma: float) -> float:
    """Smallest eps with R_K(eps) <= eps^2 R / (2 e sigma): eps_hat = 1 / sqrt(eta*)."""
    return 1.0 / math.sqrt(eta_star(lams, radius, sigma))


def rule_fires(lams, eta, radius: float, sigma: float) -> np.ndarray:
    """The rule's test R_K(1/sqrt(eta)) > R / (2 e sigma eta), directly (for eta > 0)."""
    eta = np.atleast_1d(np.asarray(eta, dtype=np.float64))
    return rademacher(lams, 1.0 / np.sqrt(eta)) > radius / (2 * math.e * sigma * eta)


def stopping_time(lams, step, radius: float, sigma: float, t_max: int = 10**7) -> int:
    """T_hat = max{t : eta_t <= eta*} for a constant step or a non-increasing schedule."""
    es = eta_star(lams, radius, sigma)
    if np.isscalar(step):
        if step <= 0:
            raise ConfigError(f"step must be positive, got {step}")
        return int(min(math.floor(es / step * (1 + 1e-12)), t_max))
    etas = np.concatenate([[0.0], np.cumsum(np.asarray(step, dtype=np.float64))])
    ok = np.nonzero(etas <= es)[0]
    return int(ok[-1])


def first_firing(lams, step, radius: float, sigma: float, t_max: int = 10**6) -> int:
    """Iterate t = 1, 2, ... and return (first t at which the rule fires) - 1: the naive reference."""
    eta = 0.0
    for t in range(1, t_max + 1):
        eta += step if np.isscalar(step) else step[t - 1]
        if rule_fires(lams, eta, radius, sigma)[0]:
            return t - 1
    return t_max


def estimate_radius(k, r, rcond: float = 1e-10) -> float:
    """R = sqrt(r^T G^+ r): the RKHS norm of the smallest interpolant of the residual r = y - f_PT(X)."""
    g = as_kernel(k)
    r = np.asarray(r, dtype=np.float64)
    lams, u = np.linalg.eigh(g)
    keep = lams > rcond * lams.max()
    proj = u[:, keep].T @ r
    return float(math.sqrt(np.sum(proj ** 2 / lams[keep])))


def estimate_sigma(k, y, f0=None, grid=None) -> tuple[float, float]:
    """Noise sd from a pilot kernel ridge fit (ridge by GCV) with the degrees-of-freedom correction
    sigma^2 = ||(I - S) r||^2 / (N - 2 tr S + tr S^2). Returns (sigma, ridge)."""
    lams, u = eigh_desc(k)
    n = len(lams)
    r = np.asarray(y, dtype=np.float64) - (0 if f0 is None else np.asarray(f0, dtype=np.float64))
    p = u.T @ r
    grid = np.logspace(-8, 2, 61) * max(lams[0], 1e-300) if grid is None else np.asarray(grid)
    best = None
    for lam in grid:
        s = lams / (lams + lam)
        rss = np.sum(((1 - s) * p) ** 2)
        gcv = rss / n / (1 - s.sum() / n) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, lam, s, rss)
    _, lam, s, rss = best
    dof = n - 2 * s.sum() + np.sum(s ** 2)
    if dof <= 0:
        raise KernelError("cannot estimate sigma: the pilot fit leaves no residual degrees of freedom")
    return float(math.sqrt(rss / dof)), float(lam)


@dataclass
class StopReport:
    """Everything the rule computed, serialisable to JSON."""

    n: int
    step: float
    radius: float
    radius_source: str
    sigma: float
    sigma_source: str
    eta_star: float
    eps_hat: float
    t_hat: int
    error_bound: float
    lambda_1: float
    epochs: float | None = None
    batch_size: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def steps_to_epochs(t: int, n: int, batch_size: int | None = None) -> float:
    """Full-batch steps -> epochs: one step per epoch for full batch, ceil(N/B) steps per epoch otherwise."""
    if batch_size is None or batch_size >= n:
        return float(t)
    return t / math.ceil(n / batch_size)


def stop_report(k, y, f0=None, step: float | None = None, sigma: float | None = None, radius: float | None = None,
                batch_size: int | None = None) -> StopReport:
    """The RWY rule on an unnormalised kernel: estimates R and sigma where not given, and says so.

    `step` is the kernel-GD step alpha on K/N; for parameter GD on the mean loss (1/2N) sum (f - y)^2
    with learning rate lr, alpha = lr (for the plain mean squared error, alpha = 2 lr)."""
    k = as_kernel(k)
    n = k.shape[0]
    lams, _ = eigh_desc(k)
    step = step if step is not None else min(1.0, 1.0 / lams[0])
    r = np.asarray(y, dtype=np.float64) - (0 if f0 is None else np.asarray(f0, dtype=np.float64))
    r_src, s_src = "given", "given"
    if radius is None:
        radius, r_src = estimate_radius(k, r), "estimated: sqrt(r^T G^+ r), r = y - f_PT(X)"
    if sigma is None:
        sigma, _ = estimate_sigma(k, y, f0)
        s_src = "estimated: pilot kernel ridge (GCV) with dof correction"
    es = eta_star(lams, radius, sigma)
    t_hat = stopping_time(lams, step, radius, sigma)
    eps = 1.0 / math.sqrt(es)
    return StopReport(n, float(step), float(radius), r_src, float(sigma), s_src, es, eps, t_hat,
                      12 * radius ** 2 * eps ** 2, float(lams[0]), steps_to_epochs(t_hat, n, batch_size), batch_size)


def t_op(etas, g, c: float) -> int:
    """T_op = argmin_{tau <= T_max} C / eta_tau + g(tau) (eq 36), g a non-decreasing drift bound."""
    etas = np.asarray(etas, dtype=np.float64)
    if etas.ndim != 1 or len(etas) < 2:
        raise ConfigError("etas must list eta_0..eta_Tmax")
    taus = np.arange(len(etas))
    gv = np.asarray([g(t) for t in taus], dtype=np.float64)
    if np.any(np.diff(gv) < -1e-12):
        raise ConfigError("the drift bound g must be non-decreasing")
    with np.errstate(divide="ignore"):
        obj = np.where(etas > 0, c / etas, np.inf) + gv
    return int(np.argmin(obj))
