"""Spectrum of a kernel: eigenvalues, decay rate beta with uncertainty, predicted rates."""

from .decay import (
    DecayComparison,
    DecayFit,
    DrawsSummary,
    WindowBeta,
    compare_models,
    effective_dimension,
    equivalent_n,
    fit_beta,
    fit_exponential,
    over_draws,
    paper_beta,
    predicted_error,
    rate_exponent,
    sensitivity,
)
from .eig import as_kernel, eigenvalues, eigh_desc
from .matched import BetaCI, matched_beta, subsample_ci
from .report import EffectiveDimension, SpectrumReport, analyse
from .result import Result

__all__ = ["BetaCI", "DecayComparison", "DecayFit", "DrawsSummary", "EffectiveDimension", "Result", "SpectrumReport",
           "WindowBeta", "analyse", "as_kernel", "compare_models", "effective_dimension", "eigenvalues", "eigh_desc",
           "equivalent_n", "fit_beta", "fit_exponential", "matched_beta", "over_draws", "paper_beta", "predicted_error",
           "rate_exponent", "sensitivity", "subsample_ci"]
