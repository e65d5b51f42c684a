"""Kernels whose operator spectrum is known in closed form: the validation grid's kernels and the parametric
interval's simulated kernels.

K(x, x') = sum_k mu_k 2 cos(k pi x) cos(k pi x') on points x in [0, 1]: the cosines are orthonormal under U[0, 1],
so for x ~ U[0, 1] the operator's eigenvalues are exactly mu_k. The series is summed to `len(mu)` terms and the rest,
`tail` = sum of the further mu_k, goes on the diagonal (at N points the high frequencies are white noise)."""

from __future__ import annotations

import numpy as np

from .eig import Array

TERMS_PER_POINT = 8  # terms of the series summed exactly per point (the rest is the diagonal tail)
_CHUNK = 4096  # series terms per matrix product (bounds memory at N x 4096 floats)


def cosine_kernel(mu: Array, tail: float, x: Array) -> Array:
    """K on the points x: sum_k mu_k 2 cos(k pi x) cos(k pi x') + tail * I (see the module doc)."""
    n = len(x)
    out = tail * np.eye(n)
    for s in range(0, len(mu), _CHUNK):
        k = np.arange(s + 1, min(s + _CHUNK, len(mu)) + 1, dtype=np.float64)
        f = np.sqrt(2 * mu[s:s + len(k)])[None, :] * np.cos(np.pi * np.outer(x, k))
        out += f @ f.T
    return out


def shifted_power(beta: float, shift: float, terms: int) -> tuple[Array, float]:
    """mu_k = (k + shift)^(-2 beta) for k = 1..terms and the tail sum beyond (an integral; infinite for beta <= 1/2,
    then the next `terms` terms stand in for it). NaN where k + shift <= 0 (the caller replaces those)."""
    k = np.arange(1, terms + 1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu: Array = np.where(k + shift > 0, np.abs(k + shift) ** (-2 * beta), np.nan)
    edge = terms + 0.5 + shift
    if beta > 0.5:
        tail = edge ** (1 - 2 * beta) / (2 * beta - 1)
    else:
        tail = float(np.sum((np.arange(terms + 1, 2 * terms + 1) + shift) ** (-2 * beta)))
    return mu, float(tail)
