"""The efficiency experiment's config (issue 27): model, task variants, both tiers, the primary test, all
validated once at the boundary."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from ..config import StrictModel

BUILTIN_TASKS = ["stsb", "sts12", "semrel", "rte", "mrpc", "cr", "sst2", "amazon_polarity"]


class Control(StrictModel):
    """A same-input control: the parent's inputs (so its eNTK and beta) with other labels."""

    name: str = Field(..., pattern=r"^[a-z0-9_]+$")
    parent: str
    kind: Literal["permute", "length", "flip", "noise"] = Field(
        ..., description="permute: labels shuffled over the rows; length: label = input longer than the median "
                         "(classification) or its standardised length (regression); flip: a fraction of binary labels "
                         "flipped; noise: Gaussian noise of `amount` label sd added (regression)")
    amount: float = Field(0.0, ge=0, le=10, description="flip: fraction of labels flipped; noise: sd in label sds")


class LinearTier(StrictModel):
    """Tier (a): hold-out kernel GD on the eNTK over the pool (the linearised model's exact curve)."""

    sizes: list[int] = Field(default_factory=lambda: [16, 32, 64, 128, 256, 384])
    subsets: int = Field(30, ge=2)
    val_frac: float = Field(0.25, gt=0, lt=1)
    min_val: int = Field(32, ge=1)


class FinetuneTier(StrictModel):
    """Tier (b): full fine-tuning without dropout, budget in epochs with a minimum step count, hold-out stopping."""

    sizes: list[int] = Field(default_factory=lambda: [64, 256, 1024])
    seeds: int = Field(3, ge=1)
    lr: float = Field(2e-5, gt=0)
    batch_size: int = Field(16, ge=1)
    epochs: float = Field(4.0, gt=0)
    min_steps: int = Field(60, ge=1)
    patience: int = Field(3, ge=1)
    val_frac: float = Field(0.25, gt=0, lt=1)
    min_val: int = Field(32, ge=1, description="validation rows at every size (issue 27: >= 32)")
    workers: int = Field(1, ge=1, le=64, description="fine-tuning cells run at once, in processes of one thread each")


class PrimaryTest(StrictModel):
    """The one primary test, stated before any run: one-sided exact Spearman, predictor vs measure, across variants."""

    predictor: Literal["predicted_rate"] = "predicted_rate"
    measure: Literal["rate"] = "rate"
    alpha: float = Field(0.05, gt=0, lt=1)
    power_at: list[float] = Field(default_factory=lambda: [0.5, 0.7, 0.8])
    power_sims: int = Field(2000, ge=100)
    power_needed: float = Field(0.8, gt=0, lt=1, description="'not supported' needs at least this power at rho 0.7")


class EfficiencyConfig(StrictModel):
    """`ntkft efficiency`: the kernel per input set, tier (a) per variant, tier (b) per cell, the test."""

    model: str = "minilm-l6"
    layers: int | None = Field(None, ge=1, description="truncate after this block (fine-tuning setting 'head')")
    sigma: float = Field(1.0, gt=0, description="head init scale, the same in the kernel and every fine-tuning cell")
    max_length: int = Field(64, ge=2)
    tasks: list[str] = Field(default_factory=lambda: list(BUILTIN_TASKS))
    controls: list[Control] = Field(default_factory=list)
    pool: int = Field(640, ge=16, description="rows of the kernel pool N per input set")
    n_test: int = Field(500, ge=8, description="test rows (all of the split when it has fewer)")
    beta_draws: int = Field(50, ge=0, description="simulated kernels behind ntkft's beta interval")
    paper_n: int = Field(100, ge=10, description="rows per draw of the paper's estimator (3 disjoint draws)")
    linear: LinearTier = Field(default_factory=LinearTier)
    finetune: FinetuneTier = Field(default_factory=FinetuneTier)
    test: PrimaryTest = Field(default_factory=PrimaryTest)
    bootstrap: int = Field(200, ge=10, description="bootstrap draws over seeds and test rows jointly")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> EfficiencyConfig:
        names = list(self.tasks) + [c.name for c in self.controls]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"controls: the variant name '{dup[0]}' is used twice")
        for c in self.controls:
            if c.parent not in self.tasks:
                raise ValueError(f"controls: '{c.name}' has parent '{c.parent}', which is not in tasks")
        big = max(self.linear.sizes)
        used = big + max(self.linear.min_val, math.ceil(self.linear.val_frac * big))
        if used >= self.pool:
            raise ValueError(f"linear: size {big} + its validation rows ({used} in all) leave no test rows in the "
                             f"pool ({self.pool})")
        if sorted(set(self.linear.sizes)) != self.linear.sizes or sorted(set(self.finetune.sizes)) != self.finetune.sizes:
            raise ValueError("linear: sizes must be increasing and distinct (finetune too)")
        return self

    @property
    def variants(self) -> list[str]:
        return list(self.tasks) + [c.name for c in self.controls]
