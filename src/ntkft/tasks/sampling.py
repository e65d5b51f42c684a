"""Seeded subsampling (stratified for classification) and a fixed hold-out split carved from train."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, DataError
from .data import TaskData


def _stratify(data: TaskData) -> np.ndarray | None:
    if data.task.type != "classification":
        return None
    counts = np.bincount(data.labels)
    return data.labels if (counts[counts > 0] >= 2).all() else None


def subsample(data: TaskData, n: int | None, seed: int = 0) -> TaskData:
    """`n` rows drawn without replacement (stratified by class), in a fixed order for a given seed."""
    if n is None or n >= len(data):
        if n is not None and n > len(data):
            raise ConfigError(f"n: {n} is larger than task '{data.task.name}' split '{data.split}' ({len(data)} rows)", param="n")
        return data
    if n < 1:
        raise ConfigError(f"n: must be >= 1, got {n}", param="n")
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(data))
    strat = _stratify(data)
    if strat is not None and n < len(np.unique(strat)):
        strat = None
    pick, _ = train_test_split(idx, train_size=n, random_state=seed, stratify=strat)
    return data.take(pick)


def holdout(data: TaskData, val: float | int = 0.1, seed: int = 0) -> tuple[TaskData, TaskData]:
    """Split train into (train, validation) with a fixed seed; stratified for classification."""
    from sklearn.model_selection import train_test_split

    n_val = int(round(val * len(data))) if isinstance(val, float) else int(val)
    if n_val < 1:
        raise DataError(f"hold-out split of '{data.task.name}' would be empty ({len(data)} rows, val={val})")
    if n_val >= len(data):
        raise DataError(f"hold-out split of '{data.task.name}' leaves no training rows ({len(data)} rows, val={val})")
    idx = np.arange(len(data))
    strat = _stratify(data)
    if strat is not None and (n_val < len(np.unique(strat)) or len(data) - n_val < len(np.unique(strat))):
        strat = None
    tr, va = train_test_split(idx, test_size=n_val, random_state=seed, stratify=strat)
    train, valid = data.take(tr), data.take(va)
    if data.task.type == "classification" and len(np.unique(train.labels)) < 2:
        raise DataError(f"task '{data.task.name}': the training split has only one class")
    return train, valid
