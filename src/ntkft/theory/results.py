"""The theory lab's summaries as typed results: what `width_sweep`, `sample_sweep` and `arithmetic_sweep` write to
summary.json and return. Per-quantity statistics whose names are data (dotted paths such as 'err_t_hat.net')
are extra fields validated as `MeanSd`; everything else is a named field."""

from __future__ import annotations

from pydantic import ConfigDict

from .._results import ResultModel
from .fits import SlopeFit


class MeanSd(ResultModel):
    """Mean and sample sd (ddof 1; 0 for one value) over seeds or draws."""

    mean: float
    sd: float


class _Quantities(ResultModel):
    """A record with named fields plus one `MeanSd` per measured quantity (extra fields)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, MeanSd]

    def q(self, name: str) -> MeanSd:
        """The statistics of quantity `name` (e.g. 'theta_dist', 'err_oracle.net')."""
        got = (self.__pydantic_extra__ or {}).get(name)
        if got is None:
            raise KeyError(f"{type(self).__name__} has no quantity '{name}'")
        return got


class WidthStats(_Quantities):
    """One width of the width sweep: every quantity's mean and sd over seeds, and the eNTK spread over seeds."""

    k0_spread: float | None
    kpt_spread: float | None
    seeds: int
    step_ok: bool


class WidthFit(ResultModel):
    """A quantity's log-log slope in width over all widths and over the large ones (n >= fit_min_width)."""

    label: str
    all: SlopeFit | None
    large: SlopeFit | None


class TaskFacts(ResultModel):
    """The target task of the lab: its correlation with the source task and the variance of its targets."""

    task_corr: float
    target_var: float


class WidthSummary(ResultModel):
    """summary.json of `ntkft theory width-sweep`."""

    widths: list[int]
    per_width: dict[str, WidthStats]
    fits: dict[str, WidthFit]
    task: TaskFacts | None = None


class SampleSize(_Quantities):
    """One target-sample size of the sample sweep: errors at each stop (extra fields), stop times, beta."""

    times: dict[str, MeanSd]
    t_hat_capped: int
    beta_window: MeanSd


class SampleBeta(ResultModel):
    """beta of the pretrained model's eNTK at the largest size: the window fit over draws and the paper's."""

    window_mean: float
    window_sd: float
    paper_mean: float
    n: int


class SampleFit(SlopeFit):
    """An error's slope in N_2 against the predicted rate, and its verdict against -1/2 too."""

    vs_minus_half: str


class SampleSummary(ResultModel):
    """summary.json of `ntkft theory sample-sweep`."""

    width: int
    sizes: list[int]
    beta: SampleBeta
    predicted_slope: float | None
    per_size: dict[str, SampleSize]
    fits: dict[str, SampleFit | None]


class ArithDesign(_Quantities):
    """One design (orthogonal or overlapping) at one width: every quantity's mean and sd over seeds."""

    negation_positive: str  # 'k/m': how many negations made the target worse


class ArithFit(ResultModel):
    """A quantity's log-log slope in width."""

    label: str
    fit: SlopeFit | None


class ArithmeticSummary(ResultModel):
    """summary.json of `ntkft theory arithmetic`."""

    widths: list[int]
    per_width: dict[str, dict[str, ArithDesign]]
    fits: dict[str, ArithFit]
