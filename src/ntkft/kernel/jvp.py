"""NTK-vector products (Novak et al. 2022), the way the paper computed K: vmap(jvp(vjp)).

Column j of K is J (J^T e_j): a VJP gives the gradient of f(x_j); a forward-mode JVP pushes that
gradient through f on the row block. Costs a forward-mode pass per column: a cross-check, not fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp, vmap

from ..errors import KernelError
from .tiled import TiledMethod


class JvpMethod(TiledMethod):
    """Row features = the inputs; column features = per-sample gradients from VJPs."""

    name = "jvp"

    def _f(self, ids: torch.Tensor, mask: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        return lambda p: functional_call(cast(nn.Module, self.model), p, (ids, mask), strict=False).reshape(ids.shape[0], -1)

    def _primals(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.params.items()}

    def features(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        f = self._f(ids, mask)
        res = vjp(f, self._primals())
        out, pullback = res[0], res[1]
        b, c = out.shape
        eye = torch.eye(b * c, dtype=out.dtype, device=out.device).reshape(b * c, b, c)
        (grads,) = vmap(pullback)(eye)  # dict of (b*c, *shape)
        return ids, mask, grads

    def tile(self, fi: Any, fj: Any) -> torch.Tensor:
        ids, mask, _ = fi
        _, _, grads_j = fj
        f = self._f(ids, mask)
        primals = self._primals()
        cols: torch.Tensor = vmap(lambda t: jvp(f, (primals,), (t,))[1])(grads_j)  # (bj*c, bi, c)
        k = cols.permute(1, 2, 0).reshape(-1, cols.shape[0])
        if not torch.isfinite(k).all():
            raise KernelError("a JVP kernel tile contains NaN or inf (the model produced non-finite values)")
        return k.double().to(self.opt.device if self.opt.accumulate == "device" else "cpu")

    def bytes_per_sample(self) -> int:
        return 4 * self.c * sum(p.numel() * p.element_size() for p in self.params.values())
