"""eNTK of the reference transformer: a fast factored form, and the naive J J^T it is tested against.

One forward and one backward of sum_i f(x_i) give, for every ScaledLinear, its inputs a_i and output gradients d_i
(samples do not interact, so these are per-sample). The per-sample weight gradient is scale * d_i^T a_i, so
<grad_i, grad_j> = scale^2 sum_{t,s} (a_it . a_js)(d_it . d_js) without materialising it (or materialised when
that is cheaper, e.g. the d0 -> n input layer); biases and LayerNorm gains are materialised (they are small).
"""

from __future__ import annotations

import torch

from ..errors import KernelError
from .model import LayerNorm, ReferenceTransformer, ScaledLinear, recorded_modules


def kernel_scale(model: ReferenceTransformer) -> float:
    """1/n under standard parameterisation (eq 37), 1 under NTK parameterisation (B.2)."""
    return 1.0 / model.spec.width if model.spec.parameterisation == "standard" else 1.0


def _gram(x: torch.Tensor) -> torch.Tensor:
    return x @ x.T


def entk(model: ReferenceTransformer, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Unnormalised K_ij = <d f(x_i)/d theta, d f(x_j)/d theta> over every trainable tensor (float64, N x N);
    equal to `ntkft.kernel.kernel_matrix(model, {...})`."""
    mods = recorded_modules(model)
    if any(not p.requires_grad for p in model.parameters()):
        raise KernelError("entk differentiates every parameter; some have requires_grad=False")
    mask = torch.ones_like(ids) if mask is None else mask
    for m in mods:
        m.record = True
    try:
        with torch.enable_grad():
            out = model(ids, mask).sum()
            grads = torch.autograd.grad(out, [m.saved[1] for m in mods if m.saved is not None])
    finally:
        for m in mods:
            m.record = False
    b = ids.shape[0]
    k = torch.zeros(b, b, dtype=torch.float64)
    for m, d in zip(mods, grads):
        assert m.saved is not None
        a = m.saved[0]
        m.saved = None
        d = d.detach()
        if a.dim() == 2:  # the head reads pooled features: one "token"
            a, d = a[:, None], d[:, None]
        t = a.shape[1]
        if isinstance(m, LayerNorm):
            for g in ((d * a).sum(1), d.sum(1)):
                k += _gram(g).double()
            continue
        assert isinstance(m, ScaledLinear)
        fan_in, fan_out = a.shape[-1], d.shape[-1]
        if t * t * (fan_in + fan_out) < fan_in * fan_out:
            prod = _gram(a.reshape(b * t, -1)) * _gram(d.reshape(b * t, -1))
            k += m.scale ** 2 * prod.double().reshape(b, t, b, t).sum((1, 3))
        else:
            g = torch.einsum("bto,bti->boi", d, a).reshape(b, -1)
            k += m.scale ** 2 * _gram(g).double()
        if m.bias is not None:
            k += m.scale_b ** 2 * _gram(d.sum(1)).double()
    if not torch.isfinite(k).all():
        raise KernelError("the eNTK of the reference model has NaN or inf entries")
    return k


def naive_entk(model: ReferenceTransformer, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """J J^T with J's rows the flattened per-sample gradients (one backward per sample): the test oracle."""
    mask = torch.ones_like(ids) if mask is None else mask
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(ids.shape[0]):
        gs = torch.autograd.grad(model(ids[i:i + 1], mask[i:i + 1]).sum(), params)
        rows.append(torch.cat([g.reshape(-1) for g in gs]).double())
    j = torch.stack(rows)
    return j @ j.T
