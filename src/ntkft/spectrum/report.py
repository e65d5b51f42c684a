"""One call that reads everything off a kernel's spectrum, as a JSON-ready dict."""

from __future__ import annotations

import numpy as np

from .decay import compare_models, effective_dimension, fit_beta, paper_beta, rate_exponent, sensitivity, subsample_ci
from .eig import eigenvalues


def analyse(k, ci_draws: int = 200, level: float = 0.9, seed: int = 0) -> dict:
    """Eigenvalues of K/N, both beta estimators, fit-range sensitivity, a subsampling CI, power vs
    exponential, the predicted rate exponent and the effective dimension on a ridge grid."""
    lams = eigenvalues(k)
    paper = paper_beta(lams)
    window = fit_beta(lams)
    ci = subsample_ci(k, draws=ci_draws, level=level, seed=seed)
    pos = lams[lams > 0]
    ridges = (pos[0] * np.logspace(-6, 0, 13)).tolist()
    return {
        "n": int(len(lams)),
        "num_positive": int(len(pos)),
        "eigenvalues": lams.tolist(),
        "beta_paper": paper.to_dict(),
        "beta_window": window.to_dict(),
        "beta_ci": {"low": ci.low, "high": ci.high, "level": ci.level, "m": ci.m, "draws": ci.draws},
        "sensitivity": sensitivity(lams),
        "decay_model": compare_models(lams),
        "rate_exponent": rate_exponent(window.beta) if window.beta > 0 else None,
        "rate_exponent_paper": rate_exponent(paper.beta) if paper.beta > 0 else None,
        "effective_dimension": {"ridge": ridges, "d": effective_dimension(lams, ridges).tolist()},
    }
