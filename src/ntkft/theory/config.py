"""Configs of the theory lab (pydantic; every field is a CLI flag of `ntkft theory ...`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..config import StrictModel
from .model import RefSpec


class LabConfig(StrictModel):
    """Reference network, synthetic tasks and gradient descent shared by every lab experiment."""

    parameterisation: Literal["standard", "ntk"] = Field("standard", description="standard: train W, lr eta0/n, "
                                                         "kernel /n (eq 37); ntk: W = sigma/sqrt(fan_in) w, train w, lr eta0")
    heads: int = Field(2, ge=1, le=16, description="attention heads per layer (finite, as in the paper)")
    blocks: int = Field(1, ge=1, le=8, description="transformer blocks")
    seq_len: int = Field(6, ge=1, le=64, description="tokens per input sequence")
    vocab: int = Field(32, ge=4, le=4096, description="vocabulary size (two halves with orthogonal embeddings)")
    embed_dim: int = Field(16, ge=2, le=1024, description="fixed token embedding dimension d0 (even)")
    sigma_q: float = Field(1.0, gt=0, le=100, description="init scale of W^Q")
    sigma_k: float = Field(1.0, gt=0, le=100, description="init scale of W^K")
    sigma_v: float = Field(1.0, gt=0, le=100, description="init scale of W^V")
    sigma_o: float = Field(1.0, gt=0, le=100, description="init scale of W^O")
    sigma_w: float = Field(1.0, gt=0, le=100, description="init scale of the input, MLP and head weights")
    sigma_b: float = Field(0.1, gt=0, le=100, description="init scale of the biases")
    eta0: float = Field(0.8, gt=0, le=100, description="GD rate eta_0 (lr eta_0/n standard, eta_0 NTK); "
                        "the kernel-GD step is alpha = eta_0, must be <= min(1, 1/lambda_1)")
    pretrain_steps: int = Field(100, ge=1, le=100000, description="full-batch GD steps on the source task")
    finetune_steps: int = Field(300, ge=1, le=100000, description="full-batch GD steps on the target task (T_max)")
    n_source: int = Field(128, ge=2, le=100000, description="source training samples N_1")
    n_target: int = Field(64, ge=4, le=100000, description="target training samples N_2")
    n_val: int = Field(32, ge=2, le=100000, description="target hold-out samples for hold-out early stopping")
    n_test: int = Field(128, ge=2, le=100000, description="target test samples (error against the noiseless f_tgt)")
    noise: float = Field(0.5, gt=0, le=100, description="label noise sd sigma (Gaussian)")
    teacher_width: int = Field(16, ge=1, le=4096, description="width of the teacher transformer")
    teacher_qk: float = Field(2.5, gt=0, le=100, description="teacher sigma_Q = sigma_K (non-uniform attention)")
    shift: float = Field(0.3, ge=0, le=100, description="target teacher = source teacher with weights shifted by this "
                         "times their sd")
    data_seed: int = Field(0, ge=0, description="seed of the embeddings, teachers, inputs and noise")
    patience: int = Field(10, ge=1, le=100000, description="hold-out early stopping patience (GD steps)")
    drift_points: int = Field(5, ge=1, le=100, description="times along fine-tuning at which K_t is computed")

    @field_validator("embed_dim")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError("must be even (two orthogonal halves)")
        return v

    def spec(self, width: int) -> RefSpec:
        """The student network at width n."""
        return RefSpec(width=width, heads=self.heads, blocks=self.blocks, vocab=self.vocab, embed_dim=self.embed_dim,
                       sigma_q=self.sigma_q, sigma_k=self.sigma_k, sigma_v=self.sigma_v, sigma_o=self.sigma_o,
                       sigma_w=self.sigma_w, sigma_b=self.sigma_b, parameterisation=self.parameterisation)

    def lr(self, width: int) -> float:
        """eps = eta_0 / n (standard, Theorem 5) or eta_0 (NTK)."""
        return self.eta0 / width if self.parameterisation == "standard" else self.eta0


def _listify(v: object) -> object:
    """A single number given on the command line (`--widths 64`) is a one-element list."""
    return [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def _widths(v: list[int]) -> list[int]:
    if not v or any(w < 1 or w > 16384 for w in v):
        raise ValueError("must list widths in [1, 16384]")
    return sorted(set(v))


class WidthSweepConfig(LabConfig):
    """Width sweep: pretrain, fine-tune, measure drift, linearisation and errors per (width, seed)."""

    widths: list[int] = Field([16, 32, 64, 128, 256, 512], description="widths n (comma separated)")
    seeds: int = Field(3, ge=1, le=1000, description="init seeds per width (data fixed by data_seed)")
    fit_min_width: int = Field(64, ge=1, description="slopes are also fitted on widths >= this")

    _one_w = field_validator("widths", mode="before")(_listify)

    @field_validator("widths")
    @classmethod
    def _check_widths(cls, v: list[int]) -> list[int]:
        return _widths(v)

    @model_validator(mode="after")
    def _need_two(self) -> WidthSweepConfig:
        if len(self.widths) < 2:
            raise ValueError("widths: need at least two widths for a slope")
        return self


class SampleSweepConfig(LabConfig):
    """Sample-size sweep at one width: early-stopped error against N_2, vs the rate from the measured beta (eq 30)."""

    width: int = Field(256, ge=1, le=16384, description="network width n")
    sizes: list[int] = Field([16, 32, 64, 128, 256], description="target training sizes N_2 (comma separated)")
    seeds: int = Field(3, ge=1, le=1000, description="draws of the training set per size")

    _one_s = field_validator("sizes", mode="before")(_listify)

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if len(v) < 2 or any(s < 4 for s in v):
            raise ValueError("need at least two sizes, each >= 4")
        return sorted(set(v))


class ArithmeticConfig(LabConfig):
    """Task arithmetic in the lab: orthogonal-by-construction vs overlapping target pairs, as width grows."""

    widths: list[int] = Field([16, 64, 256], description="widths n (comma separated)")
    seeds: int = Field(2, ge=1, le=1000, description="init seeds per width")

    _one_w = field_validator("widths", mode="before")(_listify)

    @field_validator("widths")
    @classmethod
    def _check_widths(cls, v: list[int]) -> list[int]:
        return _widths(v)


UNIT_FREE = {"widths", "seeds", "sizes", "fit_min_width"}  # fields that choose units, not what one unit computes
