"""The paper's Section 7 end to end: spectra, learning curves, rankings, stopping and task vectors as cached
stages over the other packages, and a report (HTML + Markdown) built from the run folder's JSON."""

from .config import ModelPlan, ReproConfig
from .report import rebuild, render
from .runner import ReproResult, reproduce

__all__ = ["ModelPlan", "ReproConfig", "ReproResult", "rebuild", "render", "reproduce"]
