"""Model selection and data-need prediction from the eNTK (`ntkft select`, issue 28): shared predictors
(`predictors`) and statistics (`stats`), the command and API (`config`, `run`, `report`), the validation harness."""

from .config import Candidate, SelectConfig
from .run import CandidateResult, Curve, SelectResult, select

__all__ = ["Candidate", "CandidateResult", "Curve", "SelectConfig", "SelectResult", "select"]
