"""The reproduction's one config: which models, tasks, sizes and stages (YAML, Python and CLI alike).

`ReproConfig` is composed of the stages' own settings: each stage module declares `class Options(RunOptions)`
with its fields, descriptions and validators, and ReproConfig inherits them all (fields flat, as YAML keys and
CLI flags). Only checks that span stages live here."""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from . import curves, rankings, spectra, stopping, taskvec
from .options import ModelPlan, RunOptions

__all__ = ["ModelPlan", "ReproConfig", "RunOptions", "quick_config_path"]


class ReproConfig(taskvec.Options, stopping.Options, rankings.Options, curves.Options, spectra.Options):
    """The paper's Section 7 as five stages: spectra, learning curves, rankings, stopping, task vectors."""

    # The bases are every stage's Options, the LAST stage FIRST: pydantic orders the fields from the last base up,
    # so the fields (--help, config.json, the report's config) read RunOptions', then stage 1's, 2's, ...
    # A stage's `Options` missing here, or out of order, fails tests/test_repro_results.py.

    @model_validator(mode="after")
    def _tune(self) -> ReproConfig:
        if self.tune_size is not None and self.tune_size not in self.sizes:
            raise ValueError(f"tune_size {self.tune_size} is not one of the sizes {self.sizes}")
        for m in self.models:
            if m.sizes is not None:
                extra = sorted(set(m.sizes) - set(self.sizes))
                if extra:
                    raise ValueError(f"models: {m.id}'s sizes {extra} are not among the run's sizes {self.sizes}")
                if self.tuning_size not in m.sizes:
                    raise ValueError(f"models: {m.id}'s sizes {sorted(m.sizes)} lack the tuning size {self.tuning_size}")
        names = [m.id for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: two plans share the name {names} (give one a label)")
        return self


def quick_config_path() -> Path:
    """configs/quick.yaml of the source checkout (`ntkft reproduce --quick`, `make demo`)."""
    path = Path(__file__).resolve().parents[3] / "configs" / "quick.yaml"
    if not path.is_file():
        from ..errors import ConfigError

        raise ConfigError(f"{path}: the quick config ships with the source checkout; use --config FILE instead")
    return path
