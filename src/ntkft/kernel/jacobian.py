"""Reference method: per-sample Jacobians with torch.func.jacrev, contracted block by block.

Samples are looped over rather than vmapped: Hugging Face mask code branches on data
(`padding_mask.all()`), which vmap cannot trace, and the reference must work for every model."""

from __future__ import annotations

import torch
from torch.func import functional_call, jacrev

from ._common import check_finite, on_model_device


def per_sample_jacobian(model, params: dict, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """J of shape (B, C, P): d f_c(x_b) / d theta over the selected parameters, flattened in order."""
    names = list(params)
    detached = {n: p.detach() for n, p in params.items()}

    def f_one(p, i, m):
        out = functional_call(model, p, (i[None], m[None]), strict=False)
        return out.reshape(-1)

    ids, mask = on_model_device(model, ids, mask)
    rows = []
    for i in range(ids.shape[0]):
        jac = jacrev(f_one)(detached, ids[i], mask[i])
        rows.append(torch.cat([jac[n].reshape(jac[n].shape[0], -1) for n in names], dim=-1))
    return check_finite(torch.stack(rows), "the Jacobian")


class JacobianMethod:
    """Features of a block = its per-sample Jacobian; a tile = J_I J_J^T."""

    def __init__(self, model, params: dict) -> None:
        self.model, self.params = model, params

    def features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return per_sample_jacobian(self.model, self.params, ids, mask)

    def tile(self, fi: torch.Tensor, fj: torch.Tensor) -> torch.Tensor:
        """J_I J_J^T accumulated in float64 over parameter chunks (float32 over 10^8 terms drifts ~1e-3)."""
        a, b = fi.reshape(fi.shape[0] * fi.shape[1], -1), fj.reshape(fj.shape[0] * fj.shape[1], -1)
        out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64)
        for s in range(0, a.shape[1], 1 << 22):
            out += (a[:, s:s + (1 << 22)].double() @ b[:, s:s + (1 << 22)].double().T).cpu()
        return out

    def bytes_per_sample(self, length: int, out_dim: int) -> int:
        return 3 * out_dim * sum(p.numel() * p.element_size() for p in self.params.values())
