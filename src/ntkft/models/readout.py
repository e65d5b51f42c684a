"""The theory's readout f(x) = w . h(x) + b on top of a pretrained backbone.

h(x) is the final hidden state (after the final norm) at the last non-padding token for decoders,
and the attention-masked mean over tokens for encoders. w ~ N(0, sigma^2/n), b ~ N(0, sigma^2).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..errors import ModelError
from .zoo import Kind, LoadedModel


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so left and right padding give the same outputs."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding token in each row, for either padding side."""
    t = mask.shape[-1]
    return t - 1 - torch.flip(mask.long(), dims=[-1]).argmax(-1)


def pool(hidden: torch.Tensor, mask: torch.Tensor, kind: Kind) -> torch.Tensor:
    """Sequence -> vector: last real token (decoder) or masked mean (encoder)."""
    if kind == "decoder":
        idx = last_token_index(mask)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class Readout(nn.Module):
    """Backbone + linear readout with `out_dim` outputs (1 for the scalar theory readout)."""

    def __init__(self, backbone: nn.Module, kind: Kind, hidden_size: int, out_dim: int = 1,
                 sigma: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if out_dim < 1:
            raise ModelError(f"out_dim must be >= 1, got {out_dim}")
        self.backbone = backbone
        self.kind = kind
        self.out_dim = out_dim
        self.head = nn.Linear(hidden_size, out_dim)
        dtype = next(backbone.parameters()).dtype
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            w = torch.randn(out_dim, hidden_size, generator=gen, dtype=torch.float64) * (sigma / hidden_size ** 0.5)
            b = torch.randn(out_dim, generator=gen, dtype=torch.float64) * sigma
            self.head.weight.copy_(w)
            self.head.bias.copy_(b)
        self.head.to(dtype)
        params = inspect.signature(backbone.forward).parameters
        self._takes_positions = "position_ids" in params
        self.eval()  # the kernel is of f_PT: no dropout unless a trainer switches it on

    @classmethod
    def from_loaded(cls, m: LoadedModel, out_dim: int = 1, sigma: float = 1.0, seed: int = 0) -> Readout:
        return cls(m.backbone, m.kind, m.hidden_size, out_dim, sigma, seed)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled final hidden state h(x), shape (B, n)."""
        if self.kind == "decoder":
            # Move real tokens to the front: left-padded rows would give pad queries a fully masked
            # causal row (NaN in float64 eager attention); positions come from the mask, so f is unchanged.
            order = torch.argsort(1 - attention_mask.long(), dim=1, stable=True)
            input_ids, attention_mask = input_ids.gather(1, order), attention_mask.gather(1, order)
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._takes_positions:
            kwargs["position_ids"] = position_ids_from_mask(attention_mask)
        out = self.backbone(**kwargs, use_cache=False) if self.kind == "decoder" else self.backbone(**kwargs)
        return pool(out.last_hidden_state, attention_mask, self.kind)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """f(x): shape (B,) for the scalar readout, (B, C) otherwise."""
        out = self.head(self.features(input_ids, attention_mask))
        return out.squeeze(-1) if self.out_dim == 1 else out
