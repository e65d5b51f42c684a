"""Spectrum of a kernel: eigenvalues, decay rate beta with uncertainty, predicted rates."""

from .decay import (
                    BetaCI,
                    DecayFit,
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
                    subsample_ci,
)
from .eig import as_kernel, eigenvalues, eigh_desc
from .report import analyse

__all__ = ["BetaCI", "analyse", "DecayFit", "as_kernel", "compare_models", "effective_dimension", "eigenvalues", "eigh_desc",
           "equivalent_n", "fit_beta", "fit_exponential", "over_draws", "paper_beta", "predicted_error",
           "rate_exponent", "sensitivity", "subsample_ci"]
