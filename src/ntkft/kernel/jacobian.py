"""Reference method: per-sample Jacobians with torch.func.jacrev, contracted tile by tile in float64.

Samples are looped over rather than vmapped: Hugging Face mask code branches on data
(`padding_mask.all()`), which vmap cannot trace, and the reference must work for every model."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.func import functional_call, jacrev

from ..errors import KernelError
from .contract import KernelModel
from .tiled import TiledMethod


def per_sample_jacobian(model: KernelModel, params: dict[str, nn.Parameter], ids: torch.Tensor,
                        mask: torch.Tensor) -> torch.Tensor:
    """J of shape (B, C, P): d f_c(x_b) / d theta over the selected parameters, flattened in order."""
    names = list(params)
    detached = {n: p.detach() for n, p in params.items()}

    def f_one(p: dict[str, torch.Tensor], i: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = functional_call(cast(nn.Module, model), p, (i[None], m[None]), strict=False)
        return out.reshape(-1)

    rows = []
    for i in range(ids.shape[0]):
        jac = jacrev(f_one)(detached, ids[i], mask[i])
        rows.append(torch.cat([jac[n].reshape(jac[n].shape[0], -1) for n in names], dim=-1))
    j = torch.stack(rows)
    if not torch.isfinite(j).all():
        raise KernelError("the Jacobian contains NaN or inf (the model produced non-finite values)")
    return j


class JacobianMethod(TiledMethod):
    """Features of a batch = its per-sample Jacobian; a tile = J_I J_J^T."""

    name = "jacobian"

    def features(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from . import jacobian  # looked up at call time, so tests can interrupt it

        return jacobian.per_sample_jacobian(self.model, self.params, ids, mask)

    def tile(self, fi: torch.Tensor, fj: torch.Tensor) -> torch.Tensor:
        """J_I J_J^T accumulated in float64 over parameter chunks (float32 over 10^8 terms drifts ~1e-3)."""
        a, b = fi.reshape(fi.shape[0] * fi.shape[1], -1), fj.reshape(fj.shape[0] * fj.shape[1], -1)
        acc = self.opt.device if self.opt.accumulate == "device" else torch.device("cpu")
        out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64, device=acc)
        for s in range(0, a.shape[1], 1 << 22):
            out += (a[:, s:s + (1 << 22)].double() @ b[:, s:s + (1 << 22)].double().T).to(acc)
        return out

    def bytes_per_sample(self) -> int:
        return 3 * self.c * sum(p.numel() * p.element_size() for p in self.params.values())
