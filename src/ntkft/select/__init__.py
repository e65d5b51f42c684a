"""Model selection and data-need prediction from the eNTK (`ntkft select`, issue 28): shared predictors
(`predictors`), statistics (`stats`), and the command built on them."""

from .config import Candidate, SelectConfig
from .run import CandidateResult, Curve, SelectResult, select

__all__ = ["Candidate", "CandidateResult", "Curve", "SelectConfig", "SelectResult", "select"]
