"""Hold-out early stopping with the semantics of Hugging Face's EarlyStoppingCallback and Lightning's
EarlyStopping: patience counted in evaluations, min_delta, mode min/max, stop on a non-finite metric."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import ConfigError


@dataclass
class EarlyStopping:
    patience: int = 5
    min_delta: float = 0.0
    mode: str = "min"
    best: float | None = None
    best_step: int = 0
    bad: int = 0
    reason: str = ""

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ConfigError(f"mode must be 'min' or 'max', got '{self.mode}'")
        if self.patience < 1:
            raise ConfigError(f"patience must be >= 1, got {self.patience}")
        if self.min_delta < 0:
            raise ConfigError(f"min_delta must be >= 0, got {self.min_delta}")

    def update(self, value: float, step: int) -> tuple[bool, bool]:
        """Record one evaluation; returns (improved, should_stop)."""
        if not math.isfinite(value):
            self.reason = f"non-finite validation metric at step {step}"
            return False, True
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if better:
            self.best, self.best_step, self.bad = value, step, 0
            return True, False
        self.bad += 1
        if self.bad >= self.patience:
            self.reason = f"no improvement for {self.patience} evaluations (best at step {self.best_step})"
            return False, True
        return False, False

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, v)
