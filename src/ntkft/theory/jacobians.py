"""Closed-form attention Jacobians, eq (8)-(9) and (55)-(57), for one sample: the test oracle for autograd.

Math convention (the paper's): y = x W with W in R^{in x out}; for a ScaledLinear `m`, W = (m.scale * m.weight)^T,
so d f / d m.weight = m.scale * J(W)^T. `delta` = d f^{L+1} / d f^l (T x n), the gradient at the attention output.
Vectorisation is row-major, vec(M)[t n + j] = M[t, j], so vec(A X B) = (A kron B^T) vec(X); it matches Lambda_h's
blocks by rows (eq 8). The paper's eq (56) mixes this with the column-major order; the terms are the same.
"""

from __future__ import annotations

from typing import Any

import torch

from .model import Attention, ScaledLinear


def _w(m: ScaledLinear) -> torch.Tensor:
    w: torch.Tensor = (m.weight * m.scale).T
    return w


def parts(attn: Attention, g: torch.Tensor, mask: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
    """Per head: Q_h, K_h, V_h, S_h = Q_h K_h^T / d, P_h = softmax_rows(S_h), A_h = P_h V_h, Lambda_h (eq 8)."""
    t, n = g.shape
    allowed = torch.ones(t, t, dtype=torch.bool) if mask is None else mask.bool()[None, :].expand(t, t).clone()
    if attn.causal:
        allowed &= torch.ones(t, t, dtype=torch.bool).tril()
    out = []
    for h in range(attn.h):
        cols = slice(h * n, (h + 1) * n)
        wq, wk, wv = _w(attn.q)[:, cols], _w(attn.k)[:, cols], _w(attn.v)[:, cols]
        q, k, v = g @ wq, g @ wk, g @ wv
        s = q @ k.T / attn.n
        p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
        lam = torch.block_diag(*[torch.diag(p[i]) - torch.outer(p[i], p[i]) for i in range(t)])  # type: ignore[no-untyped-call]
        out.append({"WQ": wq, "WK": wk, "WV": wv, "WO": _w(attn.o)[cols, :], "Q": q, "K": k, "V": v, "S": s, "P": p,
                    "A": p @ v, "Lambda": lam})
    return out


def weight_jacobians(attn: Attention, g: torch.Tensor, delta: torch.Tensor,
                     mask: torch.Tensor | None = None) -> dict[str, Any]:
    """J(W^O) (Hn x n) and, per head h, J(W^Q_h), J(W^K_h), J(W^V_h) (n x n), eq (9) / (59)-(63)."""
    ps = parts(attn, g, mask)
    t, n = g.shape
    out = {"O": torch.cat([p["A"] for p in ps], 1).T @ delta}  # [A_1..A_H]^T delta
    for h, p in enumerate(ps):
        d_a = delta @ p["WO"].T  # d f / d A_h
        out[f"V{h}"] = g.T @ p["P"].T @ d_a  # g^T P_h^T (d f / d f^{lh})
        d_p = d_a @ p["V"].T  # d f / d P_h
        d_s = (p["Lambda"] @ d_p.reshape(-1)).reshape(t, t)  # (d P_h / d S_h)^T d f / d P_h
        out[f"Q{h}"] = g.T @ d_s @ p["K"] / attn.n
        out[f"K{h}"] = g.T @ d_s.T @ p["Q"] / attn.n
    return out


def input_jacobian(attn: Attention, g: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """d vec(f^l) / d vec(g^{l-1}) in R^{Tn x Tn} (eq 55-57):
    J^h = P_h kron W^V_h^T + (1/d) (I_T kron V_h^T) Lambda_h [I_T kron K_h W^Q_h^T + (Q_h W^K_h^T kron I_T) C],
    with C the commutation matrix (vec(g^T) = C vec(g)), and d f^l / d g = sum_h (I_T kron W^O_h^T) J^h."""
    t, n = g.shape
    eye_t = torch.eye(t, dtype=g.dtype)
    comm = torch.zeros(t * n, t * n, dtype=g.dtype)
    idx = torch.arange(t * n)
    comm[(idx % n) * t + idx // n, idx] = 1.0  # row (j, i) of vec(g^T) <- entry (i, j) of vec(g)
    total = torch.zeros(t * n, t * n, dtype=g.dtype)
    for p in parts(attn, g, mask):
        score = torch.kron(eye_t, p["K"] @ p["WQ"].T) + torch.kron(p["Q"] @ p["WK"].T, eye_t) @ comm
        jh = torch.kron(p["P"], p["WV"].T.contiguous()) + torch.kron(eye_t, p["V"].T.contiguous()) @ p["Lambda"] @ score / attn.n
        total += torch.kron(eye_t, p["WO"].T.contiguous()) @ jh
    return total
