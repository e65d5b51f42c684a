"""What a fine-tuning run reports (result.json): where it stopped and why, its scores beside the constant
predictor's on the same rows, history and drift."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class FinetuneResult:
    """One run's result. `baseline_val` / `baseline_test`: the constant predictor (training mean; majority class)
    scored on the same validation / test rows; `beats_baseline`: the kept model's headline test metric (`headline`:
    mse or accuracy) is better than the constant's; `f1_average`: binary (2 classes) or macro (more)."""

    config: dict
    best_step: int
    stopped_step: int
    stop_reason: str
    best_val: float | None
    monitor: str
    val_best: dict
    test_best: dict
    test_last: dict
    seconds: float
    samples_per_second: float
    history: list = field(default_factory=list)
    drift: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    baseline_val: dict = field(default_factory=dict)
    baseline_test: dict = field(default_factory=dict)
    baseline: str = ""
    headline: str = ""
    beats_baseline: bool | None = None
    f1_average: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)
