"""One pydantic config drives fine-tuning from Python, YAML files and CLI flags alike."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config import StrictModel, load_config, make
from .settings import SETTINGS, SettingName, get_setting, takes_layers


def _lr_words(optimizer: str, lr: float | None) -> str:
    """A setting's default learning rate in --help's words."""
    return "none (closed form)" if optimizer == "ridge" else "1/lambda_max of its features" if lr is None else f"{lr:g}"


class FinetuneConfig(StrictModel):
    """Fine-tuning run settings (Sections 4.2, 5.1 of the paper; Remark 5.1; Lemma 1)."""

    model: str = Field("minilm-l6", description="model alias, hub id, HF directory or .gguf file")
    task: str = Field("stsb", description="built-in task name, a task spec file (.yaml/.json), or a CSV/TSV/JSONL "
                                          "file described by text_columns, label_column and task_type")
    text_columns: list[str] | None = Field(None, description="data file as task: its text column(s), comma-separated")
    label_column: str | None = Field(None, description="data file as task: its label column")
    task_type: Literal["regression", "classification"] | None = Field(None, description="data file as task: its type")
    setting: SettingName = Field("full", description=" | ".join(f"{s.name} ({s.about})" for s in SETTINGS.values()))
    layers: int | None = Field(None, ge=1, description="truncate the backbone after this block (settings "
                               + ", ".join(takes_layers()) + ")")
    pooling: Literal["last", "mean"] | None = Field(None, description="override the detected pooling: last (decoder) "
                                                                      "or mean (encoder)")
    n_train: int | None = Field(None, ge=2, description="training samples drawn from the train split (seeded)")
    val: float | int = Field(0.2, description="hold-out fraction in (0, 1) or count >= 1 carved from train")
    n_test: int | None = Field(500, ge=1, description="test samples (seeded subsample of the test split)")
    max_length: int = Field(64, ge=2, description="tokens per input (checked against the model's position limit)")
    seed: int = Field(0, ge=0, description="seed of the subsample, hold-out split, head init and batch order")
    optimizer: Literal["gd", "adamw", "ridge"] = Field(None, description="gd (full batch) | adamw | ridge (closed "  # type: ignore[arg-type]
                                                       "form on frozen features, penalty cross-validated over the "
                                                       "training rows) (default per setting: "
                                              + ", ".join(f"{s.name} {s.optimizer}" for s in SETTINGS.values()) + ")")
    lr: float | None = Field(None, gt=0, description="learning rate (default per setting and optimizer: " + "; ".join(
        f"{s.name} " + ", ".join(f"{o} {_lr_words(o, v)}"
                                 for o, v in s.lr.items()) for s in SETTINGS.values()) + ")")
    weight_decay: float = Field(0.0, ge=0)
    ridge: float = Field(0.0, ge=0, description="L2 penalty on the head weights (optimizer ridge: 0 = chosen by "
                         "cross-validation over the training rows)")
    batch_size: int = Field(16, ge=1, description="micro-batch size (adamw: samples per step / grad_accum)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step")
    max_steps: int = Field(None, ge=1, description="optimiser steps at most (default per setting: "  # type: ignore[assignment]
                           + ", ".join(f"{s.name} {s.max_steps}" for s in SETTINGS.values()) + ")")
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    eval_every: int | None = Field(None, ge=1, description="evaluate every k optimiser steps (default: each epoch, "
                                                           "at least 10 times per run)")
    patience: int = Field(5, ge=1, description="evaluations without improvement before stopping")
    eval_at_start: bool = Field(True, description="evaluate before the first step too, so early stopping keeps the "
                                "starting model when training never beats it on the hold-out split")
    min_delta: float = Field(0.0, ge=0, description="smallest change that counts as an improvement")
    monitor: str | None = Field(None, description="validation metric to monitor: loss (default) or a task metric")
    mode: Literal["min", "max"] | None = Field(None, description="min or max (default from the metric)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = Field(False, description="bf16 autocast (CUDA only)")
    dropout: float | None = Field(None, ge=0, lt=1, description="dropout probability at every dropout site (default: "
                                  "the model's own; 0 = off: training follows the eval-mode model the eNTK describes)")
    sigma: float = Field(1.0, gt=0, description="scale of the new head's init: W ~ N(0, sigma^2/n), b ~ N(0, sigma^2)")
    standardize: bool = Field(True, description="regression: train on (y - mean) / sd of the training targets, "
                              "the head's bias set so that f starts at the training mean (scores in [0, 1] and [0, 5] "
                              "train alike); metrics are in the targets' units and the saved head absorbs the scale")
    start_at_prior: bool = Field(True, description="classification: the head's bias set so that the mean initial "
                                 "logits over the training rows are the log class prior (the start leans to the "
                                 "majority class; on near-balanced classes the random head's per-row noise still "
                                 "picks each row's class)")
    center_output: bool = Field(False, description="train f(x) = g(x) - g_0(x) + c: the module's output minus its "
                                "output at step 0 (a constant of each input, so the gradients and the eNTK are "
                                "unchanged) plus the constant predictor c (training mean; log class prior): step 0 "
                                "is that predictor exactly, not the random head's per-row noise; with save_model off")
    drift_every: int | None = Field(None, ge=1, description="recompute the eNTK on a probe set every k steps")
    drift_n: int = Field(16, ge=2, description="probe samples for the drift kernel")
    save_every: int | None = Field(None, ge=1, description="write a resumable training state every k steps")
    tensorboard: bool = Field(False, description="also log to OUT/tb (TensorBoard)")
    save_model: bool = Field(True, description="write the fine-tuned model to OUT/model")

    @model_validator(mode="before")
    @classmethod
    def _setting_defaults(cls, data: Any) -> Any:
        """optimizer, lr and max_steps default to the setting's own (settings/)."""
        if not isinstance(data, dict) or data.get("setting", "full") not in SETTINGS:
            return data  # an unknown setting is reported by the field's own validator
        st = SETTINGS[data.get("setting", "full")]
        data = {**data, "optimizer": data.get("optimizer") or st.optimizer}
        if data.get("lr") is None:
            data["lr"] = st.default_lr(data["optimizer"])
        if data.get("max_steps") is None:
            data["max_steps"] = 1 if data["optimizer"] == "ridge" else st.max_steps  # a closed form is one step
        return data

    @field_validator("val")
    @classmethod
    def _val(cls, v: float | int) -> float | int:
        if isinstance(v, bool):
            raise ValueError("must be a fraction in (0, 1) or a count >= 1")
        if isinstance(v, float) and not 0 < v < 1:
            raise ValueError(f"a fraction must be in (0, 1), got {v}")
        if isinstance(v, int) and v < 1:
            raise ValueError(f"a count must be >= 1, got {v}")
        return v

    @model_validator(mode="after")
    def _combos(self) -> FinetuneConfig:
        st = get_setting(self.setting)
        if self.layers is not None and "layers" not in st.options:
            raise ValueError(f"layers: applies to settings {', '.join(takes_layers())}, not '{self.setting}'")
        if self.optimizer == "ridge" and not st.frozen_backbone:
            raise ValueError(f"optimizer: ridge fits a head on frozen features (a frozen-backbone setting), "
                             f"not '{self.setting}'")
        if self.optimizer == "ridge" and (self.lr is not None or self.max_steps != 1):
            raise ValueError(f"{'lr' if self.lr is not None else 'max_steps'}: optimizer ridge (the probe's default) "
                             "is a closed-form fit, one step without a learning rate; give --optimizer gd or adamw "
                             "to train the head by steps")
        if self.optimizer == "ridge" and self.center_output:
            raise ValueError("center_output: the ridge optimizer fits the head itself, not an offset from step 0")
        if self.lr is None and not (st.frozen_backbone and self.optimizer in ("gd", "ridge")):
            raise ValueError("lr: only a frozen backbone with full-batch GD derives its step from the features; "
                             "give --lr")
        if self.center_output and self.save_model:
            raise ValueError("center_output: the trained f subtracts the step-0 model's output, which one saved "
                             "Hugging Face model cannot hold; turn save_model off (--no-save-model)")
        if self.warmup_steps >= self.max_steps and self.warmup_steps:
            raise ValueError(f"warmup_steps: {self.warmup_steps} must be below max_steps ({self.max_steps})")
        return self

    def lr_factor(self, step: int) -> float:
        """The learning-rate multiplier at optimiser step `step`: linear warm-up, then the schedule."""
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        frac = min(max((step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps), 0.0), 1.0)
        return 1.0 - frac if self.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))

    def task_spec(self) -> Any:
        """The TaskSpec this config names (a built-in, a spec file, a data file or table source described by the flags)."""
        from ..tasks import resolve_task

        return resolve_task(self.task, self.text_columns, self.label_column, self.task_type)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> FinetuneConfig:
        """A config from a YAML file, with keyword overrides."""
        return load_config(cls, path, overrides)

    @classmethod
    def make(cls, **kw: Any) -> FinetuneConfig:
        """Validate with one-line errors naming the field."""
        return make(cls, **kw)
