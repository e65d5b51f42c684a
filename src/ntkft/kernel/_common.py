"""Small helpers shared with other packages (finetune trims padding the same way the kernel does)."""

from __future__ import annotations

import torch


def trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop columns that are padding in every row (exact: positions come from the mask)."""
    keep = mask.bool().any(0)
    if keep.all():
        return ids, mask
    return ids[:, keep], mask[:, keep]
