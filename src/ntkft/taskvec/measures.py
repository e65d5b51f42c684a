"""What task arithmetic's theory predicts, measured: the linearised prediction of a merged model (Corollary 2),
the weight-disentanglement error (Ortiz-Jimenez et al. 2023) and kernel orthogonality (Assumption 5.1)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.func import functional_call, jvp

from ..kernel import kernel_matrix
from ..kernel._common import trim
from .evaluate import Encoded, Session, TaskEval, score
from .vector import TaskVector

# ---------------------------------------------------------------- Corollary 2: f_PT + <lam tau, grad f_PT>


def linearised_vs_merged(s: Session, tv: TaskVector, lam: float, t: TaskEval, enc: Encoded) -> dict[str, float]:
    """f_lin = f_PT + <lam tau, grad f_PT> (one jvp) against the merged model's outputs f_MT on `enc`, with t's head.

    rel_error = ||f_lin - f_MT|| / ||f_MT - f_PT||: 0 when Corollary 2 holds exactly, 1 when the first-order term
    explains nothing of the change the merge made."""
    s.set_weights(tv, lam)
    f_mt = s.outputs(s.readout(t.head), enc)
    s.set_weights(None, 0.0)
    model = s.readout(t.head)
    names = s._names or {}
    tau = dict(tv.items())
    params = {n: p.detach() for n, p in model.named_parameters()}
    tangent = {}
    for n, p in params.items():
        base = names.get(n[len("backbone."):]) if n.startswith("backbone.") else None
        tangent[n] = (tau[base].to(p.device, p.dtype) * lam) if base in tau else torch.zeros_like(p)
    f_pt, f_lin = [], []
    for i in range(0, len(enc), s.batch_size):
        ids, mask = trim(enc.ids[i:i + s.batch_size], enc.mask[i:i + s.batch_size])
        ids, mask = ids.to(s.device), mask.to(s.device)
        f = lambda p, ids=ids, mask=mask: functional_call(model, p, (ids, mask))  # noqa: E731
        with torch.no_grad():
            pair = jvp(f, (params,), (tangent,))
        out, dout = pair[0], pair[1]
        f_pt.append(out.reshape(len(ids), -1).float().cpu())
        f_lin.append((out + dout).reshape(len(ids), -1).float().cpu())
    fp, fl = torch.cat(f_pt), torch.cat(f_lin)
    change = float((f_mt - fp).norm())
    gap = float((fl - f_mt).norm())
    res = {"n": len(enc), "lambda": lam, "rel_error": gap / change if change > 0 else float("nan"),
           "mean_abs_gap": float((fl - f_mt).abs().mean()), "mean_abs_change": float((f_mt - fp).abs().mean())}
    if t.type == "classification":
        res["agreement"] = float((fl.argmax(-1) == f_mt.argmax(-1)).float().mean())
    m_lin = score(t.type, fl, enc.y, t.num_classes or 2)
    m_mt = score(t.type, f_mt, enc.y, t.num_classes or 2)
    res[f"{t.metric}_linearised"] = m_lin.get(t.metric, float("nan"))
    res[f"{t.metric}_merged"] = m_mt.get(t.metric, float("nan"))
    return res


# ---------------------------------------------------------------- weight disentanglement


def disagreement(task_type: str, a: torch.Tensor, b: torch.Tensor) -> float:
    """dist of Ortiz-Jimenez et al.: prediction disagreement (classification) or mean squared difference."""
    if task_type == "classification":
        return float((a.argmax(-1) != b.argmax(-1)).float().mean())
    return float(((a - b) ** 2).mean())


def disentanglement(s: Session, vectors: list[TaskVector], tasks: list[TaskEval], coefficients: list[float],
                    progress: bool = True) -> dict:
    """xi(a1, a2) = sum_t E_{x~D_t} dist(f_t(x; PT + a_t tau_t), f_t(x; PT + a1 tau1 + a2 tau2)) on the grid."""
    from tqdm.auto import tqdm

    single: dict[tuple[int, float], torch.Tensor] = {}
    for i, (v, t) in enumerate(zip(vectors, tasks)):
        for a in coefficients:
            s.set_weights(v, a)
            single[(i, a)] = s.outputs(s.readout(t.head), t.test)
    k = len(coefficients)
    parts = [[[0.0] * k for _ in range(k)] for _ in tasks]
    bar = tqdm(total=k * k, desc="disentanglement grid", disable=not progress)
    for r, a1 in enumerate(coefficients):
        for c, a2 in enumerate(coefficients):
            s.set_weights(a1 * vectors[0] + a2 * vectors[1], 1.0)
            for i, t in enumerate(tasks):
                joint = s.outputs(s.readout(t.head), t.test)
                parts[i][r][c] = disagreement(t.type, single[(i, (a1, a2)[i])], joint)
            bar.update(1)
    bar.close()
    xi = [[sum(p[r][c] for p in parts) for c in range(k)] for r in range(k)]
    return {"xi": xi, "parts": {t.name: p for t, p in zip(tasks, parts)}}


# ---------------------------------------------------------------- kernel orthogonality (Assumption 5.1)


def _centre(k: torch.Tensor) -> torch.Tensor:
    """H1 K H2 with H = I - 11^T/n on each side (removes each task's mean gradient)."""
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def cross_ratio(k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor) -> float:
    """||K_12||_F / sqrt(||K_11||_F ||K_22||_F): 0 for orthogonal tasks, 1 when the cross block is as large as the
    diagonal ones (identical tasks)."""
    d = math.sqrt(float(k11.norm()) * float(k22.norm()))
    return float(k12.norm()) / d if d > 0 else float("nan")


def orthogonality_scores(k12: torch.Tensor, k11: torch.Tensor, k22: torch.Tensor) -> dict[str, float]:
    """The cross-block ratio on raw and on centred kernels."""
    return {"kernel_ratio": cross_ratio(k12, k11, k22),
            "kernel_ratio_centred": cross_ratio(_centre(k12), _centre(k11), _centre(k22))}


def kernel_blocks(f: Any, x1: dict, x2: dict | None, params: str, method: str, progress: bool) -> torch.Tensor:
    """K(X1, X2) of the readout f (symmetric K(X1, X1) when x2 is None), unnormalised, float64."""
    return kernel_matrix(f, x1, x2, params=params, method=method, progress=progress)
