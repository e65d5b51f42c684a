"""Shared helpers for the kernel methods: input batches, trimming padding, checks."""

from __future__ import annotations

import torch

from ..errors import KernelError


def trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop columns that are padding in every row (exact: positions come from the mask)."""
    keep = mask.bool().any(0)
    if keep.all():
        return ids, mask
    return ids[:, keep], mask[:, keep]


def on_model_device(model, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs moved to the device the model's parameters live on (a no-op on CPU)."""
    dev = next(model.parameters()).device
    return ids.to(dev), mask.to(dev)


def check_finite(t: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(t).all():
        raise KernelError(f"{what} contains NaN or inf (the model produced non-finite values)")
    return t


def outputs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """f(x) as (B, C) whatever the readout's shape."""
    f = model(ids, mask)
    return f.reshape(f.shape[0], -1)
