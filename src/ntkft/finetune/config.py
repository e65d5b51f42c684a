"""One pydantic config drives fine-tuning from Python, YAML files and CLI flags alike."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError

Setting = Literal["full", "head", "probe", "linearized"]


class FinetuneConfig(BaseModel):
    """Fine-tuning run settings (Sections 4.2, 5.1 of the paper; Remark 5.1; Lemma 1)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "minilm-l6"
    task: str = "stsb"
    setting: Setting = "full"
    layers: int | None = Field(None, description="truncate the backbone after this block (setting head/probe)")
    n_train: int | None = Field(None, description="training samples drawn from the train split (seeded)")
    val: float | int = Field(0.2, description="hold-out fraction (float) or count (int) carved from train")
    n_test: int | None = Field(500, description="test samples (seeded subsample of the test split)")
    max_length: int = 64
    seed: int = 0
    optimizer: Literal["gd", "adamw"] = "adamw"
    lr: float = 2e-5
    weight_decay: float = 0.0
    ridge: float = 0.0
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 200
    warmup_steps: int = 0
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    eval_every: int | None = Field(None, description="evaluate every k optimiser steps (default: each epoch)")
    patience: int = 5
    min_delta: float = 0.0
    monitor: str | None = Field(None, description="val metric to monitor (default: loss)")
    mode: Literal["min", "max"] | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = Field(False, description="bf16 autocast (CUDA only)")
    sigma: float = 1.0
    drift_every: int | None = Field(None, description="recompute the eNTK on a probe set every k steps")
    drift_n: int = 16
    save_every: int | None = Field(None, description="write a resumable training state every k steps")
    tensorboard: bool = False
    save_model: bool = True

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> FinetuneConfig:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from None
        return cls.make(**{**raw, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def make(cls, **kw) -> FinetuneConfig:
        """Validate with one-line errors naming the field."""
        try:
            return cls(**kw)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise ConfigError(f"invalid fine-tuning config: {loc}: {err['msg']}") from None
