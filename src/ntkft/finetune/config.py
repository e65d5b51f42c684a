"""One pydantic config drives fine-tuning from Python, YAML files and CLI flags alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config import StrictModel, load_config, make
from ..errors import ConfigError

Setting = Literal["full", "head", "probe", "linearized"]

# Learning rates that work out of the box (checked on MiniLM / STS-B): the head alone tolerates far
# larger steps than the backbone, and full-batch GD needs larger steps than AdamW.
# The probe is linear regression on cached features (Remark 5.1): full-batch GD with step 1/lambda_max of the
# feature second-moment matrix (None below: computed from the features; the RWY step bound) early-stops like
# ridge and, unlike AdamW's per-coordinate steps, does not chase validation noise (checked on MiniLM/STS-B).
DEFAULT_LR: dict[tuple[str, str], float | None] = {
    ("full", "adamw"): 2e-5, ("head", "adamw"): 5e-5, ("probe", "adamw"): 1e-2, ("linearized", "adamw"): 2e-5,
    ("full", "gd"): 1e-2, ("head", "gd"): 1e-2, ("probe", "gd"): None, ("linearized", "gd"): 1e-2,
}
DEFAULT_OPTIMIZER: dict[str, str] = {"full": "adamw", "head": "adamw", "probe": "gd", "linearized": "adamw"}

# The probe trains a linear head on cached features: steps are cheap and it needs more of them.
DEFAULT_MAX_STEPS: dict[str, int] = {"full": 200, "head": 200, "probe": 1000, "linearized": 200}


class FinetuneConfig(StrictModel):
    """Fine-tuning run settings (Sections 4.2, 5.1 of the paper; Remark 5.1; Lemma 1)."""

    model: str = Field("minilm-l6", description="model alias, hub id, HF directory or .gguf file")
    task: str = Field("stsb", description="built-in task name, a task spec file (.yaml/.json), or a CSV/TSV/JSONL "
                                          "file described by text_columns, label_column and task_type")
    text_columns: list[str] | None = Field(None, description="data file as task: its text column(s), comma-separated")
    label_column: str | None = Field(None, description="data file as task: its label column")
    task_type: Literal["regression", "classification"] | None = Field(None, description="data file as task: its type")
    setting: Setting = Field("full", description="full | head (truncated backbone + head) | probe (frozen backbone) | "
                                                 "linearized (f_PT + <delta, grad f_PT>)")
    layers: int | None = Field(None, ge=1, description="truncate the backbone after this block (settings head/probe)")
    pooling: Literal["last", "mean"] | None = Field(None, description="override the detected pooling: last (decoder) "
                                                                      "or mean (encoder)")
    n_train: int | None = Field(None, ge=2, description="training samples drawn from the train split (seeded)")
    val: float | int = Field(0.2, description="hold-out fraction in (0, 1) or count >= 1 carved from train")
    n_test: int | None = Field(500, ge=1, description="test samples (seeded subsample of the test split)")
    max_length: int = Field(64, ge=2, description="tokens per input (checked against the model's position limit)")
    seed: int = Field(0, ge=0, description="seed of the subsample, hold-out split, head init and batch order")
    optimizer: Literal["gd", "adamw"] = Field(None, description="gd (full batch) | adamw (default: gd for the "  # type: ignore[arg-type,assignment]
                                                                "probe, adamw otherwise)")
    lr: float | None = Field(None, gt=0, description="learning rate (default per setting and optimizer: adamw full 2e-5, "
                                                    "head 5e-5, probe 1e-2, linearized 2e-5; gd 1e-2, probe 1/lambda_max "
                                                    "of its features)")
    weight_decay: float = Field(0.0, ge=0)
    ridge: float = Field(0.0, ge=0, description="L2 penalty on the head weights")
    batch_size: int = Field(16, ge=1, description="micro-batch size (adamw: samples per step / grad_accum)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step")
    max_steps: int = Field(None, ge=1, description="optimiser steps at most (default: probe 1000, "  # type: ignore[assignment]
                                                   "other settings 200)")
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
    def _default_lr(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("optimizer") is None:
            data = {**data, "optimizer": DEFAULT_OPTIMIZER.get(data.get("setting", "full"), "adamw")}
        if isinstance(data, dict) and data.get("lr") is None:
            key = (data.get("setting", "full"), data.get("optimizer", "adamw"))
            data = {**data, "lr": DEFAULT_LR.get(key, 2e-5)}
        if isinstance(data, dict) and data.get("max_steps") is None:
            data = {**data, "max_steps": DEFAULT_MAX_STEPS.get(data.get("setting", "full"), 200)}
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
        if self.layers is not None and self.setting in ("full", "linearized"):
            raise ValueError(f"layers: applies to settings head and probe, not '{self.setting}'")
        if self.lr is None and not (self.setting == "probe" and self.optimizer == "gd"):
            raise ValueError("lr: only the probe with full-batch GD derives its step from the features; give --lr")
        if self.center_output and self.save_model:
            raise ValueError("center_output: the trained f subtracts the step-0 model's output, which one saved "
                             "Hugging Face model cannot hold; turn save_model off (--no-save-model)")
        if self.warmup_steps >= self.max_steps and self.warmup_steps:
            raise ValueError(f"warmup_steps: {self.warmup_steps} must be below max_steps ({self.max_steps})")
        return self

    def task_spec(self) -> Any:
        """The TaskSpec this config names (a built-in, a spec file, or a data file described by the flags)."""
        from ..tasks import get_spec, user_task

        if Path(self.task).suffix.lower() in {".csv", ".tsv", ".jsonl"}:
            if not (self.text_columns and self.label_column and self.task_type):
                err = ConfigError(f"task: a data file ({self.task}) needs text_columns, label_column and task_type")
                err.param = "task"
                raise err
            return user_task(name=Path(self.task).stem, type=self.task_type, files={"train": str(Path(self.task).resolve())},
                             text_columns=self.text_columns, label_column=self.label_column, origin=self.task)
        return get_spec(self.task)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> FinetuneConfig:
        """A config from a YAML file, with keyword overrides."""
        return load_config(cls, path, overrides)

    @classmethod
    def make(cls, **kw: Any) -> FinetuneConfig:
        """Validate with one-line errors naming the field."""
        return make(cls, **kw)
