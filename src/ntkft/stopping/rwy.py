"""The data-dependent stopping rule of Raskutti, Wainwright & Yu (2014), eq 4-6, docs/theory.md sec. 5.

Local empirical Rademacher complexity R_K(eps) = sqrt((1/N) sum_i min(lambda_i, eps^2)) of K/N.
The rule fires at the first t with R_K(1/sqrt(eta_t)) > R / (2 e sigma eta_t), equivalently
Phi(eta_t) > R^2 / (4 e^2 sigma^2) with Phi(eta) = (eta/N) sum_i min(eta lambda_i, 1) increasing;
eta* = Phi^{-1}(that) and T_hat = max{t : eta_t <= eta*}. The critical radius solves
R_K(eps) = eps^2 R / (2 e sigma) (RWY's unit-ball rule rescaled to a ball of radius R), and
eps_hat^2 = 1 / eta*. Bound: ||f^T_hat - f*||_N^2 <= 12 R^2 eps_hat^2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import ConfigError, KernelError
from ..spectrum.checks import bad, count, positive, vector
from ..spectrum.eig import Array, as_kernel, eigh_desc
from ..spectrum.result import Result

Eig = tuple[Array, Array]  # eigenvalues of K/N (descending, floored) and eigenvectors


def rademacher(lams: ArrayLike, eps: ArrayLike) -> Array:
    """R_K(eps) for the eigenvalues of K/N."""
    lam = np.asarray(lams, dtype=np.float64)
    e = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    out: Array = np.sqrt(np.minimum(lam[None, :], e[:, None] ** 2).sum(1) / len(lam))
    return out


def phi(lams: ArrayLike, eta: ArrayLike) -> Array:
    """Phi(eta) = (eta/N) sum_i min(eta lambda_i, 1), increasing in eta."""
    lam = np.asarray(lams, dtype=np.float64)
    e = np.atleast_1d(np.asarray(eta, dtype=np.float64))
    out: Array = e / len(lam) * np.minimum(e[:, None] * lam[None, :], 1.0).sum(1)
    return out


def eta_star(lams: ArrayLike, radius: float, sigma: float) -> float:
    """The eta at which Phi(eta) = R^2 / (4 e^2 sigma^2) (Phi is continuous and increasing)."""
    lam = np.asarray(lams, dtype=np.float64)
    radius, sigma = positive("radius", radius), positive("sigma", sigma)
    if not (lam > 0).any():
        raise KernelError("kernel has no positive eigenvalue")
    thr = radius ** 2 / (4 * math.e ** 2 * sigma ** 2)
    lo, hi = 0.0, 1.0
    while phi(lam, hi)[0] <= thr:
        hi *= 2
        if hi > 1e300:
            raise KernelError("stopping threshold never reached")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if phi(lam, mid)[0] <= thr else (lo, mid)
    return hi


def critical_radius(lams: ArrayLike, radius: float, sigma: float) -> float:
    """Smallest eps with R_K(eps) <= eps^2 R / (2 e sigma): eps_hat = 1 / sqrt(eta*)."""
    return 1.0 / math.sqrt(eta_star(lams, radius, sigma))


def rule_fires(lams: ArrayLike, eta: ArrayLike, radius: float, sigma: float) -> NDArray[np.bool_]:
    """The rule's test R_K(1/sqrt(eta)) > R / (2 e sigma eta), directly (for eta > 0)."""
    e = np.atleast_1d(np.asarray(eta, dtype=np.float64))
    out: NDArray[np.bool_] = rademacher(lams, 1.0 / np.sqrt(e)) > radius / (2 * math.e * sigma * e)
    return out


def _steps(step: float | Sequence[float] | Array) -> float | Array:
    if np.isscalar(step):
        return positive("step", step)
    arr = np.asarray(step, dtype=np.float64)
    if arr.ndim != 1 or len(arr) == 0 or not np.isfinite(arr).all() or (arr <= 0).any():
        raise bad("step", "a step schedule must be a non-empty list of finite numbers > 0")
    return arr


def stopping_time(lams: ArrayLike, step: float | Sequence[float] | Array, radius: float, sigma: float,
                  t_max: int = 10**7) -> int:
    """T_hat = max{t : eta_t <= eta*} for a constant step or a non-increasing schedule."""
    es = eta_star(lams, radius, sigma)
    s = _steps(step)
    if isinstance(s, float):
        return int(min(math.floor(es / s * (1 + 1e-12)), t_max))
    etas = np.concatenate([[0.0], np.cumsum(s)])
    ok = np.nonzero(etas <= es)[0]
    return int(ok[-1])


def first_firing(lams: ArrayLike, step: float | Sequence[float] | Array, radius: float, sigma: float,
                 t_max: int = 10**6) -> int:
    """Iterate t = 1, 2, ... and return (first t at which the rule fires) - 1: the naive reference."""
    s = _steps(step)
    eta = 0.0
    for t in range(1, t_max + 1):
        eta += s if isinstance(s, float) else float(s[t - 1])
        if rule_fires(lams, eta, radius, sigma)[0]:
            return t - 1
    return t_max


def _eig(k: Any, eig: Eig | None) -> Eig:
    return eig if eig is not None else eigh_desc(k)


def estimate_radius(k: Any, r: ArrayLike, rcond: float = 1e-10, eig: Eig | None = None) -> float:
    """R = sqrt(r^T G^+ r): the RKHS norm of the smallest interpolant of the residual r = y - f_PT(X).

    G = K is the unnormalised Gram matrix; `eig` are the eigenpairs of K/N if already computed."""
    lams, u = _eig(k, eig)
    n = len(lams)
    res = vector(r, n, "r")
    keep = lams > rcond * lams[0]
    proj = u[:, keep].T @ res
    return float(math.sqrt(np.sum(proj ** 2 / (n * lams[keep]))))


def estimate_sigma(k: Any, y: ArrayLike, f0: ArrayLike | None = None, grid: ArrayLike | None = None,
                   eig: Eig | None = None) -> tuple[float, float]:
    """Noise sd from a pilot kernel ridge fit (ridge by GCV) with the degrees-of-freedom correction
    sigma^2 = ||(I - S) r||^2 / (N - 2 tr S + tr S^2). Returns (sigma, ridge)."""
    lams, u = _eig(k, eig)
    n = len(lams)
    r = vector(y, n, "y") - (0.0 if f0 is None else vector(f0, n, "f0"))
    p = u.T @ r
    ridges = np.logspace(-8, 2, 61) * max(lams[0], 1e-300) if grid is None else np.asarray(grid, dtype=np.float64)
    best: tuple[float, float, Array, float] | None = None
    for lam in ridges:
        s = lams / (lams + lam)
        rss = float(np.sum(((1 - s) * p) ** 2))
        gcv = rss / n / (1 - s.sum() / n) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, float(lam), s, rss)
    if best is None:
        raise bad("grid", "needs at least one ridge value")
    _, lam_best, s, rss = best
    dof = n - 2 * s.sum() + np.sum(s ** 2)
    if dof <= 0 or rss <= 0:
        raise KernelError("cannot estimate sigma: the pilot fit leaves no residual (N too small or y interpolated "
                          "exactly); pass sigma")
    return float(math.sqrt(rss / dof)), lam_best


@dataclass
class StopReport(Result):
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
    num_zero: int = 0  # eigenvalues of K/N floored to 0
    pilot_ridge: float | None = None  # the GCV ridge of the sigma estimate, if estimated


def steps_to_epochs(t: int, n: int, batch_size: int | None = None) -> float:
    """Full-batch steps -> epochs: one step per epoch for full batch, ceil(N/B) steps per epoch otherwise."""
    if batch_size is None or batch_size >= n:
        return float(t)
    return t / math.ceil(n / batch_size)


def stop_report(k: Any, y: ArrayLike, f0: ArrayLike | None = None, step: float | None = None,
                sigma: float | None = None, radius: float | None = None,
                batch_size: int | None = None) -> StopReport:
    """The RWY rule on an unnormalised kernel: estimates R and sigma where not given, and says so.

    K is eigendecomposed once. `step` is the kernel-GD step alpha on K/N; for parameter GD on the mean loss
    (1/2N) sum (f - y)^2 with learning rate lr, alpha = lr (for the plain mean squared error, alpha = 2 lr)."""
    step = None if step is None else positive("step", step)
    sigma = None if sigma is None else positive("sigma", sigma)
    radius = None if radius is None else positive("radius", radius)
    batch_size = None if batch_size is None else count("batch_size", batch_size)
    kk = as_kernel(k)
    n = kk.shape[0]
    eig = eigh_desc(kk)
    lams = eig[0]
    if lams[0] <= 0:
        raise KernelError("kernel has no positive eigenvalue")
    yv = vector(y, n, "y")
    f0v = None if f0 is None else vector(f0, n, "f0")
    limit = min(1.0, 1.0 / float(lams[0]))
    step = step if step is not None else limit
    if step > limit * (1 + 1e-9):
        raise bad("step", f"{step:g} exceeds min(1, 1/lambda_1) = {limit:g}; kernel gradient descent would diverge")
    r_src, s_src, pilot = "given", "given", None
    if radius is None:
        radius = estimate_radius(kk, yv - (0.0 if f0v is None else f0v), eig=eig)
        r_src = "estimated: sqrt(r^T G^+ r), r = y - f_PT(X)"
        if radius <= 0:
            raise KernelError("cannot estimate the radius: y - f_PT(X) is zero on the kernel's range; pass radius")
    if sigma is None:
        sigma, pilot = estimate_sigma(kk, yv, f0v, eig=eig)
        s_src = "estimated: pilot kernel ridge (GCV) with dof correction"
    es = eta_star(lams, radius, sigma)
    t_hat = stopping_time(lams, step, radius, sigma)
    eps = 1.0 / math.sqrt(es)
    return StopReport(n, float(step), float(radius), r_src, float(sigma), s_src, es, eps, t_hat,
                      12 * radius ** 2 * eps ** 2, float(lams[0]), steps_to_epochs(t_hat, n, batch_size), batch_size,
                      int((lams <= 0).sum()), pilot)


def t_op(etas: ArrayLike, g: Callable[[int], float], c: float) -> int:
    """T_op = argmin_{tau <= T_max} C / eta_tau + g(tau) (eq 36), g a non-decreasing drift bound."""
    e = np.asarray(etas, dtype=np.float64)
    if e.ndim != 1 or len(e) < 2:
        raise ConfigError("etas must list eta_0..eta_Tmax")
    taus = np.arange(len(e))
    gv = np.asarray([g(int(t)) for t in taus], dtype=np.float64)
    if np.any(np.diff(gv) < -1e-12):
        raise ConfigError("the drift bound g must be non-decreasing")
    with np.errstate(divide="ignore"):
        obj = np.where(e > 0, c / np.where(e > 0, e, 1.0), np.inf) + gv
    return int(np.argmin(obj))


@dataclass
class FinetuneAction(Result):
    """What `ntkft stop` tells a user to run: T_hat as `ntkft finetune --optimizer gd` steps and epochs, and the
    bound in the targets' units beside the constant predictor's error on the same rows."""

    lr: float
    max_steps: int
    epochs: float
    batch_size: int | None
    command: str
    stable_lr: float  # 1/(2 lambda_1): above it, parameter GD on the MSE diverges on the linearised model
    bound_mse: float
    constant_mse: float
    vacuous: bool
    note: str


def finetune_action(rep: StopReport, y: ArrayLike, lr: float, batch_size: int | None = None) -> FinetuneAction:
    """Translate the rule's stopping time into fine-tuning steps.

    Kernel GD with step alpha on K/N moves f by alpha (K/N)(y - f) per step; parameter GD with learning rate lr on
    the mean squared error (1/N) sum (f - y)^2 moves the linearised model by 2 lr (K/N)(y - f). The rule's
    time eta_hat = T_hat alpha is therefore S = ceil(T_hat alpha / (2 lr)) fine-tuning steps (full batch; with
    batch B < N the same number of steps is SGD with that expected step, S / ceil(N/B) epochs)."""
    lr = float(f"{positive('lr', lr):.3g}")  # the printed value is the one the steps are for
    batch_size = None if batch_size is None else count("batch_size", batch_size)
    yv = np.asarray(y, dtype=np.float64)
    steps = max(1, math.ceil(rep.t_hat * rep.step / (2 * lr)))
    epochs = steps_to_epochs(steps, rep.n, batch_size)
    cmd = f"ntkft finetune --optimizer gd --lr {lr:g} --max-steps {steps}" + (
        f" --batch-size {batch_size}" if batch_size else "")
    const = float(np.mean((yv - yv.mean()) ** 2))
    vacuous = rep.error_bound >= const
    note = ("the bound is vacuous: it exceeds the constant predictor's error, so it guarantees nothing here "
            "(the stopping time is still the rule's)" if vacuous else "the bound is below the constant predictor's error")
    if 2 * lr * rep.lambda_1 > 1:
        note += f"; lr {lr:g} is above 1/(2 lambda_1) = {0.5 / rep.lambda_1:.3g}: plain GD on the linearised model would diverge"
    return FinetuneAction(lr, steps, epochs, batch_size, cmd, 1.0 / (2 * rep.lambda_1), rep.error_bound, const,
                          vacuous, note)
