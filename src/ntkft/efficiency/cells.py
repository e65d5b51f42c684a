"""Tier (b): one fine-tuning cell (variant, size, seed) of exactly the kernel's model, without dropout, scored per
test row so that the measured rate can be bootstrapped over seeds and test rows jointly."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import make
from ..errors import ConfigError
from .config import EfficiencyConfig
from .kernel import compare_facts, head_digest, weights_fp
from .variants import Variant, cell_rows, n_val_at, write_task


@torch.no_grad()
def train_equals_eval(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> bool:
    """True when the train-mode output equals the eval-mode output (no dropout left anywhere)."""
    was = model.training
    model.train()
    a = model(ids, mask)
    model.eval()
    b = model(ids, mask)
    model.train(was)
    return bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6))


def budget(cfg: EfficiencyConfig, size: int) -> int:
    """Optimiser steps of a cell: `epochs` epochs of the training rows, at least `min_steps`."""
    ft = cfg.finetune
    return max(ft.min_steps, math.ceil(ft.epochs * math.ceil(size / ft.batch_size)))


def finetune_config(cfg: EfficiencyConfig, task_file: Path, n_val: int, size: int) -> Any:
    """The FinetuneConfig of a cell: squared loss on the scalar head, head seed 0 (the kernel's), centred start."""
    from ..finetune import FinetuneConfig

    ft = cfg.finetune
    return make(FinetuneConfig, model=cfg.model, task=str(task_file), setting="head" if cfg.layers else "full",
                layers=cfg.layers, n_train=None, val=n_val, n_test=None, max_length=cfg.max_length, seed=0,
                optimizer="adamw", lr=ft.lr, batch_size=ft.batch_size, max_steps=budget(cfg, size),
                patience=ft.patience, sigma=cfg.sigma, center_output=True, save_model=False, device=cfg.device,
                dropout=0.0)  # every dropout site off: fine-tuning follows the eval-mode function the eNTK describes


def cell_facts(tr: Any, weights: str, dropout: str) -> dict[str, Any]:
    """The facts of the model a Trainer is about to fine-tune (see kernel.kernel_facts)."""
    c = tr.cfg
    trained = all(p.requires_grad for p in tr.model.parameters())
    return {"model": c.model, "weights": weights, "layers": c.layers, "params": "all" if trained else "partial",
            "sigma": c.sigma, "head_seed": c.seed, "head_weight": head_digest(tr.model.head),
            "out_dim": tr.model.out_dim, "pooling": tr.model.kind, "max_length": c.max_length,
            "center_output": c.center_output, "dropout": dropout}


def run_cell(cfg: EfficiencyConfig, v: Variant, size: int, seed: int, folder: Path, facts: dict[str, Any]) -> dict:
    """Fine-tune one cell; refuse (ConfigError) if its model is not the kernel's. Per-row test errors: the 0-1
    error of the sign (classification) or the squared error / Var(y_test) (regression), beside the constant
    predictor's (the training targets' mean) on the same rows."""
    from ..finetune import Trainer

    t0, c0 = time.time(), time.process_time()
    ft = cfg.finetune
    n_val = n_val_at(size, ft.val_frac, ft.min_val)
    rows = cell_rows(len(v.train_a), size, n_val, seed)
    task_file = write_task(folder, v, rows)
    tr = Trainer(finetune_config(cfg, task_file, n_val, size), None, None, progress=False).setup()
    k = min(4, len(tr.test))
    off = train_equals_eval(tr.model, tr.test.ids[:k].to(tr.device), tr.test.mask[:k].to(tr.device))
    where = f"cell {v.name} n={size} seed={seed}"
    compare_facts(facts, cell_facts(tr, weights_fp(tr.loaded), "off (eval mode)" if off else "on"), where)
    res = tr.fit()
    pred = tr.predict(tr.test).reshape(-1).double().numpy()
    y = tr.test.y.double().numpy()
    y_tr = tr.train.y.double().numpy()
    const = float(y_tr.mean())
    if v.classification:
        err = (np.sign(pred) != np.sign(y)).astype(np.float64)
        base = (np.sign(const) != np.sign(y)).astype(np.float64) if const != 0 else np.full(len(y), 0.5)
    else:
        var = float(np.var(v.y_test)) or 1.0
        err, base = (pred - y) ** 2 / var, (const - y) ** 2 / var
    if not np.all(np.isfinite(err)):
        raise ConfigError(f"{where}: non-finite test predictions (lr {ft.lr} too large?)")
    spe = max(1, math.ceil(len(tr.train) / ft.batch_size))
    return {"variant": v.name, "size": size, "seed": seed, "n_train": len(tr.train), "n_val": len(tr.val),
            "n_test": len(y), "max_steps": tr.cfg.max_steps, "best_step": res.best_step,
            "stopped_step": res.stopped_step, "stop_reason": res.stop_reason, "epochs": res.stopped_step / spe,
            "test_error": float(err.mean()), "test_se": float(err.std(ddof=1) / math.sqrt(len(err))),
            "baseline_error": float(base.mean()), "errors": [round(float(e), 6) for e in err],
            "baseline_errors": [round(float(e), 6) for e in base], "warnings": list(res.warnings),
            "seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0}
