"""Eigenvalues of a kernel matrix with input checks and a numerical floor."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

from ..errors import KernelError

FLOOR = 1e-10  # eigenvalues below FLOOR * lambda_1 are numerically zero (docs/theory.md sec. 6)

SERIAL_N = 1500  # eigenproblems up to this size run on one BLAS thread

Array = NDArray[np.float64]


def _one_blas_thread(n: int = 0) -> AbstractContextManager[object]:
    """One BLAS thread for matrices up to SERIAL_N: threads buy nothing there and cost 10x on a busy machine."""
    if n > SERIAL_N:
        return nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - installed with scikit-learn
        return nullcontext()
    limits: AbstractContextManager[object] = threadpool_limits(1, user_api="blas")
    return limits


def as_kernel(k: Any, name: str = "kernel") -> Array:
    """A float64 square, symmetric, finite matrix (numpy array, nested list or torch tensor), or a clear error."""
    if hasattr(k, "detach"):
        k = k.detach().cpu().double().numpy()
    try:
        arr = np.asarray(k, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise KernelError(f"{name} is not a numeric matrix ({e})") from None
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise KernelError(f"{name} must be a square matrix, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise KernelError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise KernelError(f"{name} contains NaN or inf")
    scale = float(np.abs(arr).max()) or 1.0
    asym = float(np.abs(arr - arr.T).max()) / scale
    if asym > 1e-6:
        raise KernelError(f"{name} is not symmetric (max |K - K^T| / max |K| = {asym:.2e})")
    out: Array = (arr + arr.T) / 2
    return out


def _floor(vals: Array, tol: float, floor: float) -> Array:
    """Check PSD up to max(tol, floor) * lambda_1 and zero everything below floor * lambda_1 (vals descending)."""
    top = max(float(vals[0]), 0.0)
    tol = max(tol, floor)
    if vals[-1] < -tol * max(top, 1e-300):
        raise KernelError(f"kernel is not positive semi-definite: eigenvalue {vals[-1]:.3e} "
                          f"(lambda_1 = {top:.3e}, tolerance {tol:g} * lambda_1)")
    out: Array = np.where(vals < floor * top, 0.0, vals)
    return out


def eigh_desc(k: Any, normalise: bool = True, tol: float = 1e-6, floor: float = FLOOR) -> tuple[Array, Array]:
    """Eigenpairs of K/N (or K), largest first; eigenvalues below floor * lambda_1 set to 0."""
    kk = as_kernel(k)
    if normalise:
        kk = kk / kk.shape[0]
    with _one_blas_thread(kk.shape[0]):
        vals, vecs = scipy.linalg.eigh(kk, driver="evr")
    return _floor(vals[::-1].copy(), tol, floor), vecs[:, ::-1].copy()


def eigenvalues(k: Any, normalise: bool = True, tol: float = 1e-6, floor: float = FLOOR) -> Array:
    """Eigenvalues of the (by default 1/N-normalised) kernel, descending, zero below floor * lambda_1.

    `floor` > FLOOR for kernels stored in low precision (float16/bfloat16 cannot resolve smaller eigenvalues)."""
    kk = as_kernel(k)
    if normalise:
        kk = kk / kk.shape[0]
    with _one_blas_thread(kk.shape[0]):
        vals = scipy.linalg.eigvalsh(kk, driver="evr")
    return _floor(vals[::-1].copy(), tol, floor)


def log_spectra(k: Array, idx: NDArray[np.int64], floor: float = FLOOR) -> Array:
    """log eigenvalues of K[s, s] / m for each row s of `idx` (B x m), descending; NaN where below the floor.

    Principal submatrices of a PSD matrix are PSD, so tiny negatives are rounding and count as zero."""
    m = idx.shape[1]
    sub = k[idx[:, :, None], idx[:, None, :]] / m
    with _one_blas_thread():  # many small problems: threads only add contention (10x slower on a busy machine)
        vals = np.linalg.eigvalsh(sub)[:, ::-1]
    ok = vals > floor * np.maximum(vals[:, :1], 1e-300)
    out: Array = np.full(vals.shape, np.nan)
    np.log(vals, out=out, where=ok)
    return out
