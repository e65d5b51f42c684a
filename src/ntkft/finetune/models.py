"""The four fine-tuning settings as modules: full, head (truncated backbone + new head), probe,
and the linearised model f_lin(x; theta) = f_PT(x) + <theta - theta_PT, grad f_PT(x)> (Lemma 1)."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jvp

from ..models import Readout


class Linearized(nn.Module):
    """First-order Taylor model around the pretrained weights; only `delta` = theta - theta_PT trains."""

    def __init__(self, base: Readout) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.names = [n for n, _ in base.named_parameters()]
        self.delta = nn.ParameterDict({n.replace(".", "__"): nn.Parameter(torch.zeros_like(p))
                                       for n, p in base.named_parameters()})
        self.out_dim = base.out_dim
        self.kind = base.kind
        self.head = base.head  # the kernel's model protocol: `head` and `out_dim`

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        primal = {n: p for n, p in self.base.named_parameters()}
        tangent = {n: self.delta[n.replace(".", "__")] for n in self.names}
        f = lambda p: functional_call(self.base, p, (input_ids, attention_mask))  # noqa: E731
        out, dout = jvp(f, (primal,), (tangent,))  # type: ignore[misc]
        return out + dout

    def theta(self) -> dict[str, torch.Tensor]:
        """theta_PT + delta, the parameters the linearised model stands for."""
        return {n: p.detach() + self.delta[n.replace(".", "__")].detach() for n, p in self.base.named_parameters()}

    def merged(self) -> Readout:
        """A Readout holding theta_PT + delta: the weights f_lin stands for (to save or evaluate)."""
        import copy

        out = copy.deepcopy(self.base)
        theta = self.theta()
        with torch.no_grad():
            for n, p in out.named_parameters():
                p.copy_(theta[n])
        return out


def probe_closed_form(features: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge regression of y on [h, 1] minimising mean (w.h + b - y)^2 + ridge ||w||^2 (b not penalised).
    Returns (weight (C, n), bias (C,)); y is (N,) or (N, C)."""
    h = features.double()
    yy = y.double().reshape(h.shape[0], -1)
    mu_h, mu_y = h.mean(0), yy.mean(0)
    hc, yc = h - mu_h, yy - mu_y
    n = h.shape[0]
    a = hc.T @ hc / n + ridge * torch.eye(h.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(a, hc.T @ yc / n)  # (n_feat, C)
    b = mu_y - mu_h @ w
    return w.T.contiguous(), b
