"""`ntkft select`'s typed results: a candidate's predicted curve and scores, and the ranked result (what
`select.json` holds); read by the run and by the report, so neither imports the other."""

from __future__ import annotations

from pydantic import BaseModel

__all__ = ["CandidateResult", "Curve", "SelectResult"]


class Curve(BaseModel):
    """Predicted test error against training-set size, with a 5-95% interval over subsets and the constant predictor."""

    sizes: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    baseline: list[float]
    metric: str


class CandidateResult(BaseModel):
    """Everything `select` predicts for one candidate (errors: MSE for regression, error rate for classification)."""

    name: str
    model: str
    layers: int | None
    setting: str
    status: str = "ok"  # ok | failed
    error: str | None = None
    params: int = 0
    seconds: float = 0.0
    kernel_seconds: float = 0.0
    curve: Curve | None = None
    error_at_n: float | None = None
    error_at_n_low: float | None = None
    error_at_n_high: float | None = None
    error_at_n_extrapolated: bool = False
    baseline_at_n: float | None = None
    n_for_target: float | None = None
    n_for_target_extrapolated: bool = False
    beta: float | None = None
    beta_low: float | None = None
    beta_high: float | None = None
    rate: float | None = None
    kta: float | None = None
    logme: float | None = None
    hscore: float | None = None


class SelectResult(BaseModel):
    """The ranking: candidates in rank order (lowest predicted error at n first), failed ones last."""

    task: str
    task_type: str
    metric: str
    n: int
    pool: int
    target_error: float | None
    candidates: list[CandidateResult]
    start: str = "constant"  # where the curves' kernel GD starts: the training mean, or the model's own step 0

    def best(self) -> CandidateResult:
        return self.candidates[0]
