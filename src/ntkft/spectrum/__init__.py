"""Spectrum of a kernel: eigenvalues, the decay rate beta (`estimate_beta`, with its interval), predicted rates."""

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
    window_fit,
)
from .eig import as_kernel, eigenvalues, eigh_desc
from .matched import BetaCI, estimate_beta, matched_beta, subsample_ci
from .report import EffectiveDimension, SpectrumReport, analyse
from .result import Result

__all__ = ["BetaCI", "DecayComparison", "DecayFit", "DrawsSummary", "EffectiveDimension", "Result", "SpectrumReport",
           "WindowBeta", "analyse", "as_kernel", "compare_models", "effective_dimension", "eigenvalues", "eigh_desc",
           "estimate_beta", "equivalent_n", "fit_beta", "fit_exponential", "matched_beta", "over_draws", "paper_beta",
           "predicted_error", "rate_exponent", "sensitivity", "subsample_ci", "window_fit"]
