"""The kernel file: `kernel.safetensors` (K and everything needed to recompute it) + `meta.json`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._io import save_tensors, write_json
from ..errors import KernelError

TENSORS = ["K", "input_ids", "attention_mask", "head.weight", "head.bias", "outputs", "labels", "indices"]


@dataclass
class KernelFile:
    """K (N x N, float64, unnormalised) with its inputs, readout head, f_PT outputs, labels and rows."""

    K: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    head_weight: torch.Tensor
    head_bias: torch.Tensor
    outputs: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    meta: dict = field(default_factory=dict)

    def save(self, out_dir: str | Path) -> Path:
        """Write kernel.safetensors and meta.json atomically into `out_dir`; returns the kernel path."""
        out = Path(out_dir)
        path = out / "kernel.safetensors"
        tensors = {"K": self.K.double(), "input_ids": self.input_ids, "attention_mask": self.attention_mask,
                   "head.weight": self.head_weight, "head.bias": self.head_bias, "outputs": self.outputs,
                   "labels": self.labels, "indices": self.indices}
        save_tensors(path, tensors, {"meta": json.dumps(self.meta, default=str)})
        write_json(out / "meta.json", self.meta)
        return path


def load_kernel_file(path: str | Path) -> KernelFile:
    """Read and validate a kernel file (a directory holding kernel.safetensors, or the file itself)."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if p.is_dir():
        p = p / "kernel.safetensors"
    if not p.is_file():
        raise KernelError(f"{p}: kernel file not found")
    try:
        with safe_open(p, framework="pt") as fh:
            names = set(fh.keys())
            missing = [n for n in TENSORS if n not in names]
            if missing:
                raise KernelError(f"{p}: not an ntkft kernel file (missing {', '.join(missing)})")
            t = {n: fh.get_tensor(n) for n in TENSORS}
            meta = json.loads((fh.metadata() or {}).get("meta", "{}"))
    except (SafetensorError, OSError, ValueError) as e:
        raise KernelError(f"{p}: cannot read safetensors ({e})") from None
    k = t["K"]
    if k.dim() != 2:
        raise KernelError(f"{p}: K must be a matrix, has shape {tuple(k.shape)}")
    if not torch.isfinite(k).all():
        raise KernelError(f"{p}: K contains NaN or inf")
    return KernelFile(k, t["input_ids"], t["attention_mask"], t["head.weight"], t["head.bias"], t["outputs"],
                      t["labels"], t["indices"], meta)
