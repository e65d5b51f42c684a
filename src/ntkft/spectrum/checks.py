"""Argument checks shared by spectrum and stopping: one-line ConfigErrors that name the parameter."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import param_error

bad = param_error  # exported (an `import ... as` is not under strict mypy): spectrum and stopping blame arguments with it


def positive(param: str, value: Any) -> float:
    """A finite number > 0 (bools, NaN and inf refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)) or value <= 0:
        raise bad(param, f"must be a finite number > 0, got {value!r}")
    return float(value)


def count(param: str, value: Any, low: int = 1) -> int:
    """An integer >= low."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise bad(param, f"must be an integer >= {low}, got {value!r}")
    return int(value)


def level(value: Any, param: str = "level") -> float:
    """A probability strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise bad(param, f"must be in (0, 1), got {value!r}")
    return float(value)


def vector(y: Any, n: int, param: str) -> NDArray[np.float64]:
    """A finite float64 vector of length n (targets, outputs or residuals beside an n x n kernel)."""
    arr = np.asarray(y, dtype=np.float64).reshape(-1)
    if arr.shape[0] != n:
        raise bad(param, f"has {arr.shape[0]} values but the kernel is {n} x {n}")
    if not np.isfinite(arr).all():
        raise bad(param, "contains NaN or inf")
    return arr
