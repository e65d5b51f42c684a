"""summary.json in issue 27's schema, validated by pydantic models (a renamed field fails in one line)."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_serializer("*")
    def _finite(self, v: Any) -> Any:  # NaN -> null in JSON
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (list, tuple)):
            return [None if isinstance(x, float) and not math.isfinite(x) else x for x in v]
        return v


class Beta(_M):
    """A variant's beta: the paper's estimator, ntkft's headline and its interval."""
    paper: float | None
    ntkft: float | None
    ci: list[float | None]


class Interval(_M):
    """An estimate and its interval ([low, high]; None where it cannot be had)."""
    value: float | None
    ci: list[float | None]


class Curve(_M):
    """A learning curve: mean test error per size, its SE over test rows, the constant predictor."""

    sizes: list[int]
    error: list[float | None]
    se: list[float | None] = Field(default_factory=list)
    baseline: float | None


class TaskRow(_M):
    """One task variant in summary.json: its betas, alignment, measured rate and n_half, predicted rates."""
    name: str
    family: str
    control_of: str | None
    beta: Beta
    kta: float | None
    rate: Interval
    n_half: Interval
    predicted_rate: float | None
    kgd_rate: float | None
    kgd_n_half: float | None = None
    logme: float | None = None
    hscore: float | None = None
    n_test: int = 0
    curve: Curve | None = None
    kgd_curve: Curve | None = None


class Power(_M):
    """The primary test's power by simulation at rho 0.5, 0.7 and 0.8."""
    p05: float = Field(alias="0.5")
    p07: float = Field(alias="0.7")
    p08: float = Field(alias="0.8")


class PrimaryTest(_M):
    """The one pre-stated test: predictor, measure, Spearman rho, one-sided p and power."""
    predictor: str
    measure: str
    rho: float | None
    p: float | None
    power: Power
    k: int = 0
    alpha: float = 0.05


class PredictorRow(_M):
    """A competing predictor's Spearman rho (and p) with the measured efficiency."""
    name: str
    rho: float | None
    p: float | None
    partial_rho: float | None = None  # controlling for the predicted rate (NaN for itself)
    measure: str = "rate"


class Summary(_M):
    """summary.json of the efficiency experiment (issue 27's schema), validated on write and read."""
    tasks: list[TaskRow]
    primary_test: PrimaryTest
    predictors: list[PredictorRow]
    verdict: str
    controls: list[dict[str, Any]] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")
