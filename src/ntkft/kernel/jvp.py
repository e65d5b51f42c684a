"""NTK-vector products (Novak et al. 2022), the way the paper computed K: vmap(jvp(vjp)).

Column j of K is J (J^T e_j): a VJP gives the gradient of f(x_j); a forward-mode JVP pushes that
gradient through f on the row block. Costs a forward-mode pass per column: a cross-check, not fast.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, jvp, vjp, vmap

from ._common import check_finite, on_model_device


class JvpMethod:
    """Row features = the inputs; column features = per-sample gradients from VJPs."""

    def __init__(self, model, params: dict) -> None:
        self.model = model
        self.params = {n: p.detach() for n, p in params.items()}

    def _f(self, ids, mask):
        return lambda p: functional_call(self.model, p, (ids, mask), strict=False).reshape(ids.shape[0], -1)

    def features(self, ids: torch.Tensor, mask: torch.Tensor):
        ids, mask = on_model_device(self.model, ids, mask)
        f = self._f(ids, mask)
        out, pullback = vjp(f, self.params)
        b, c = out.shape
        eye = torch.eye(b * c, dtype=out.dtype).reshape(b * c, b, c)
        (grads,) = vmap(pullback)(eye)  # dict of (b*c, *shape)
        return ids, mask, grads

    def tile(self, fi, fj) -> torch.Tensor:
        ids, mask, _ = fi
        _, _, grads_j = fj
        f = self._f(ids, mask)
        cols = vmap(lambda t: jvp(f, (self.params,), (t,))[1])(grads_j)  # (bj*c, bi, c)
        k = cols.permute(1, 2, 0).reshape(-1, cols.shape[0])
        return check_finite(k, "a JVP kernel tile").double().cpu()

    def bytes_per_sample(self, length: int, out_dim: int) -> int:
        return 4 * out_dim * sum(p.numel() * p.element_size() for p in self.params.values())
