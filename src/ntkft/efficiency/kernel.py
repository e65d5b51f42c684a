"""One kernel for prediction and training: the eNTK of exactly the model each fine-tuning cell trains.

The facts that make two models the same (weights, truncation, trained parameters, head init and scale, readout,
output centring, eval mode / dropout off) are written into the kernel file's metadata and compared with every
fine-tuning cell's model; a difference stops the run in one line."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..kernel import kernel_matrix
from ..models import LoadedModel, Readout, fingerprint
from ..tasks import encode
from .config import EfficiencyConfig

FACT_KEYS = ("model", "weights", "layers", "params", "sigma", "head_seed", "head_weight", "out_dim", "pooling",
             "max_length", "center_output", "dropout")


def head_digest(head: nn.Linear) -> str:
    """sha256 of the head's initial weight (not the bias: centring sets it, and the eNTK has no b in it)."""
    w = head.weight.detach().to(torch.float64).cpu().contiguous()
    return hashlib.sha256(w.numpy().tobytes()).hexdigest()[:16]


def weights_fp(loaded: LoadedModel) -> str:
    """The pretrained weights' fingerprint, on one thread (the same under any OMP_NUM_THREADS)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fingerprint(loaded.backbone)
    finally:
        torch.set_num_threads(threads)


def readout(cfg: EfficiencyConfig, loaded: LoadedModel) -> Readout:
    """The scalar-output model every cell fine-tunes, at its init: truncated if asked, head seed 0 and scale sigma."""
    if cfg.layers is not None:
        loaded = loaded.truncate(cfg.layers)
    return Readout.from_loaded(loaded, out_dim=1, sigma=cfg.sigma, seed=0)


def kernel_facts(cfg: EfficiencyConfig, weights: str, model: Readout) -> dict[str, Any]:
    """What the kernel is the eNTK of (compared with each fine-tuning cell's `cell_facts`)."""
    return {"model": cfg.model, "weights": weights, "layers": cfg.layers, "params": "all", "sigma": cfg.sigma,
            "head_seed": 0, "head_weight": head_digest(model.head), "out_dim": model.out_dim, "pooling": model.kind,
            "max_length": cfg.max_length, "center_output": True, "dropout": "off (eval mode)"}


def compare_facts(kernel: dict[str, Any], cell: dict[str, Any], where: str) -> None:
    """ConfigError in one line naming the first fact on which the cell's model differs from the kernel's."""
    for k in FACT_KEYS:
        if kernel.get(k) != cell.get(k):
            raise ConfigError(f"{where}: the fine-tuned model is not the kernel's: {k} = {cell.get(k)!r} in the cell, "
                              f"{kernel.get(k)!r} in the kernel file; prediction and training must share one kernel")


@torch.no_grad()
def _features(model: Readout, x: dict[str, torch.Tensor], batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features h(x) and outputs f(x) (eval mode) of every row."""
    model.eval()
    dev = next(model.parameters()).device
    hs = []
    for i in range(0, len(x["input_ids"]), batch):
        ids, mask = x["input_ids"][i:i + batch].to(dev), x["attention_mask"][i:i + batch].to(dev)
        hs.append(model.features(ids, mask))
    h = torch.cat(hs)
    return h, model.head(h).squeeze(-1)


def compute_kernel(cfg: EfficiencyConfig, model: Readout, tokenizer: Any, texts_a: list[str],
                   texts_b: list[str] | None, progress: bool = False) -> dict[str, torch.Tensor]:
    """K (pool x pool, float64), the pooled features F and f_PT on the pool rows."""
    x = encode(tokenizer, model.kind, texts_a, max_length=cfg.max_length, text_b=texts_b)
    k = kernel_matrix(model, x, params="all", progress=progress, device=next(model.parameters()).device)
    h, f0 = _features(model, x)
    return {"K": k.double().cpu(), "F": h.double().cpu(), "f0": f0.double().cpu()}


def facts_meta(facts: dict[str, Any], key: str) -> dict[str, str]:
    """safetensors metadata (strings only) of a kernel unit."""
    return {"facts": json.dumps(facts, sort_keys=True), "key": key}


def read_facts(meta: dict[str, str] | None) -> dict[str, Any]:
    """The model facts a kernel file's meta records (empty when it records none)."""
    return json.loads((meta or {}).get("facts", "{}"))


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as a float64 numpy array on the host."""
    return t.detach().cpu().numpy().astype(np.float64)
