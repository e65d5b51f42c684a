"""The paper's Section 7 end to end: the stages of `registry.STAGES` (spectra, learning curves, rankings,
stopping, task vectors), each cached in its own run folder and returning a typed result, and a report
(HTML + Markdown) built from those results."""

from .config import ModelPlan, ReproConfig
from .report import rebuild, render
from .runner import ReproResult, reproduce

__all__ = ["ModelPlan", "ReproConfig", "ReproResult", "rebuild", "render", "reproduce"]
