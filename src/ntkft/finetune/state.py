"""A fine-tuning run's folder: resume key, atomic training-state checkpoints, the saved model.

A checkpoint (trainable weights, best weights, optimiser, scheduler, RNG, trainer state) is written into
a temporary folder and renamed into `state/step-NNNNNNN` as a whole, so a kill between two of its files
never leaves a mixed checkpoint; older checkpoints are removed only after the new one is in place."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .._io import save_tensors, write_json
from .._runs import RunFolder

log = logging.getLogger(__name__)

STATE = "state"


def _step_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")
                  and (p / "trainer_state.json").is_file())


def write_checkpoint(rf: RunFolder, step: int, trainable: dict[str, torch.Tensor], best: dict[str, torch.Tensor],
                     optim: dict[str, Any], trainer_state: dict[str, Any]) -> Path:
    """Write one whole checkpoint atomically and drop the older ones."""
    root = rf.path(STATE)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_tensors(tmp / "trainable.safetensors", trainable)
    save_tensors(tmp / "best.safetensors", best)
    torch.save(optim, tmp / "optimizer.pt")
    write_json(tmp / "trainer_state.json", trainer_state)  # written last: its presence marks a whole checkpoint
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _step_dirs(root):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(root: Path) -> tuple[dict, dict, dict, dict] | None:
    """(trainable, best, optimiser blob, trainer state) of the newest whole checkpoint in run folder `root`, or None."""
    from safetensors.torch import load_file

    dirs = _step_dirs(Path(root) / STATE)
    if not dirs:
        return None
    d = dirs[-1]
    blob = torch.load(d / "optimizer.pt", weights_only=True, map_location="cpu")
    return (load_file(d / "trainable.safetensors"), load_file(d / "best.safetensors"), blob,
            json.loads((d / "trainer_state.json").read_text()))
