"""One call that reads everything off a kernel's spectrum, as a typed result with `to_dict()`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .decay import (
    DecayComparison,
    DecayFit,
    DrawsSummary,
    WindowBeta,
    compare_models,
    effective_dimension,
    paper_beta,
    rate_exponent,
    sensitivity,
    window_fit,
)
from .eig import FLOOR, Array, eigenvalues
from .matched import DRAWS, BetaCI, subsample_ci
from .result import Result


@dataclass
class EffectiveDimension(Result):
    """d(lambda) = sum_i lambda_i / (lambda_i + lambda) on a ridge grid."""

    ridge: list[float]
    d: list[float]


@dataclass
class SpectrumReport(Result):
    """The spectrum of one kernel: eigenvalues of K/N, beta three ways, sensitivity, decay model, rates.

    `beta` (`estimate_beta`: scale-matched, shift-fitted, finite-N corrected, with its interval) is the one
    headline beta; `beta_window` and `beta_paper` are descriptive fits of this one spectrum under their own names
    (the paper's estimator is eq 31-32; its `r2` is uncentred, `r2_centred` beside it)."""

    n: int
    num_positive: int
    num_zero: int  # eigenvalues at or below FLOOR * lambda_1 (set to 0)
    floor: float
    eigenvalues: list[float]
    beta: BetaCI
    beta_window: DecayFit
    beta_paper: DecayFit
    sensitivity: list[WindowBeta]
    decay_model: DecayComparison | None  # None when the window holds fewer than 3 eigenvalues
    rate_exponent: float | None
    rate_exponent_paper: float | None
    effective_dimension: EffectiveDimension
    name: str = ""
    over_draws: dict[str, DrawsSummary] = field(default_factory=dict)


def _decay_model(lams: Array, ci: BetaCI) -> DecayComparison | None:
    """Power law vs exponential on the matched window (where finite-N distortion is mild), if it has 3 points."""
    if ci.k_max - ci.k_min + 1 >= 3:
        return compare_models(lams, ci.k_min, ci.k_max)
    return None


def _rate(beta: float) -> float | None:
    return rate_exponent(beta) if beta > 0 else None


def analyse(k: Any, ci_draws: int = DRAWS, level: float = 0.9, seed: int = 0, name: str = "",
            floor: float = FLOOR) -> SpectrumReport:
    """Eigenvalues of K/N (decomposed once), the scale-matched beta with its interval, the window and
    paper fits, fit-range sensitivity, power vs exponential, rate exponents and the effective dimension.
    Eigenvalues below `floor` * lambda_1 count as zero (raise it for kernels stored in low precision)."""
    lams = eigenvalues(k, floor=floor)
    ci = subsample_ci(k, draws=ci_draws, level=level, seed=seed, floor=floor, lams=lams)
    pos = lams[lams > 0]
    ridges = (pos[0] * np.logspace(-6, 0, 13)).tolist()
    window, paper = window_fit(lams), paper_beta(lams)
    return SpectrumReport(
        n=int(len(lams)), num_positive=int(len(pos)), num_zero=int(len(lams) - len(pos)), floor=floor,
        eigenvalues=lams.tolist(), beta=ci, beta_window=window, beta_paper=paper, sensitivity=sensitivity(lams),
        decay_model=_decay_model(lams, ci), rate_exponent=_rate(ci.beta), rate_exponent_paper=_rate(paper.beta),
        effective_dimension=EffectiveDimension(ridges, effective_dimension(lams, ridges).tolist()), name=name)
