"""Eigenvalues of a kernel matrix with input checks and a numerical floor."""

from __future__ import annotations

import numpy as np
import scipy.linalg

from ..errors import KernelError

FLOOR = 1e-10  # eigenvalues below FLOOR * lambda_1 are numerically zero (THEORY.md sec. 6)


def as_kernel(k, name: str = "kernel") -> np.ndarray:
    """A float64 square, symmetric, finite matrix, or a clear error."""
    k = np.asarray(k.detach().cpu().numpy() if hasattr(k, "detach") else k, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise KernelError(f"{name} must be a square matrix, got shape {k.shape}")
    if k.shape[0] == 0:
        raise KernelError(f"{name} is empty")
    if not np.isfinite(k).all():
        raise KernelError(f"{name} contains NaN or inf")
    scale = np.abs(k).max() or 1.0
    asym = np.abs(k - k.T).max() / scale
    if asym > 1e-6:
        raise KernelError(f"{name} is not symmetric (max |K - K^T| / max |K| = {asym:.2e})")
    return (k + k.T) / 2


def eigh_desc(k, normalise: bool = True, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of K/N (or K), largest first; tiny negatives (> -tol * lambda_1) are clipped to 0."""
    k = as_kernel(k)
    if normalise:
        k = k / k.shape[0]
    vals, vecs = scipy.linalg.eigh(k, driver="evr")
    vals, vecs = vals[::-1].copy(), vecs[:, ::-1].copy()
    top = max(vals[0], 0.0)
    if vals[-1] < -tol * max(top, 1e-300):
        raise KernelError(f"kernel is not positive semi-definite: eigenvalue {vals[-1]:.3e} "
                          f"(lambda_1 = {top:.3e}, tolerance {tol:g} * lambda_1)")
    vals = np.where(vals < FLOOR * top, 0.0, vals)
    return vals, vecs


def eigenvalues(k, normalise: bool = True, tol: float = 1e-6) -> np.ndarray:
    """Eigenvalues of the (by default 1/N-normalised) kernel, descending, floored at FLOOR * lambda_1."""
    k = as_kernel(k)
    kk = k / k.shape[0] if normalise else k
    vals = scipy.linalg.eigvalsh(kk, driver="evr")[::-1].copy()
    top = max(vals[0], 0.0)
    if vals[-1] < -tol * max(top, 1e-300):
        raise KernelError(f"kernel is not positive semi-definite: eigenvalue {vals[-1]:.3e} "
                          f"(lambda_1 = {top:.3e}, tolerance {tol:g} * lambda_1)")
    return np.where(vals < FLOOR * top, 0.0, vals)
