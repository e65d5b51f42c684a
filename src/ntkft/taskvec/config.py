"""One pydantic config per `ntkft taskvec` command; the same YAML drives the CLI and Python."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator

from ..config import StrictModel

DEFAULT_LAMBDAS = [round(0.05 * i, 2) for i in range(21)]  # Ilharco et al.: {0, 0.05, ..., 1}
DEFAULT_COEFFICIENTS = [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]


def _grid(values: list[float], lo: float, hi: float) -> list[float]:
    if not values:
        raise ValueError("must hold at least one value")
    for v in values:
        if not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"values must lie in [{lo:g}, {hi:g}], got {v:g}")
    return sorted(set(float(v) for v in values))


def _split_list(v: Any) -> Any:
    """'a,b' -> ['a', 'b'] (a CLI flag or a YAML string); {task: path} -> ['task=path']; lists pass through."""
    if isinstance(v, str):
        return [x.strip() for x in v.split(",") if x.strip()]
    if isinstance(v, dict):
        return [f"{k}={p}" for k, p in v.items()]
    return v


class _Common(StrictModel):
    """Fields every task-vector command shares."""

    @field_validator("finetuned", "tasks", mode="before", check_fields=False)
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _split_list(v)

    pretrained: str = Field(description="pretrained model theta_PT: alias, HF directory, .gguf file or hub id")
    seed: int = Field(0, ge=0, description="seed of the row subsamples (and of a probe head)")
    max_length: int = Field(64, ge=4, le=4096, description="tokens per input after truncation")
    batch_size: int = Field(64, ge=1, description="rows per forward pass")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the models run")


class _Evaluated(_Common):
    """Commands that evaluate merged models on each task's validation and test rows."""

    n_val: int = Field(200, ge=2, description="validation rows per task for choosing lambda")
    n_test: int = Field(500, ge=2, description="test rows per task for the reported metrics")
    metric: str | None = Field(None, description="task metric to compare (default: accuracy / pearson)")
    lambdas: list[float] = Field(default_factory=lambda: list(DEFAULT_LAMBDAS),
                                 description="lambda grid, values in [0, 2] (default 0, 0.05, ..., 1)")
    save_model: bool = Field(True, description="write the merged model (HF directory + heads) at the chosen lambda")
    max_shard_mb: float = Field(2048, gt=0, description="largest safetensors shard of a written model (MiB)")

    @field_validator("lambdas")
    @classmethod
    def _lambdas(cls, v: list[float]) -> list[float]:
        return _grid(v, 0.0, 2.0)


class CosineConfig(_Common):
    """Cosine similarity of task vectors (Figure 3 left)."""

    finetuned: list[str] = Field(min_length=2, description="fine-tuned checkpoints: run folders or HF dirs, 'task=path'")


class AddConfig(_Evaluated):
    """Task addition theta_PT + lambda sum_i tau_i with lambda chosen on validation (eq 25; Figure 3 right)."""

    finetuned: list[str] = Field(min_length=2, description="fine-tuned checkpoints (two or more), 'task=path' to label")
    n_linear: int = Field(64, ge=0, description="test rows per task for the linearised prediction (Corollary 2; 0 = off)")


class NegateConfig(_Evaluated):
    """Task negation theta_PT - lambda tau (corrected eq 23): lower the target, keep the control (Corollary 1)."""

    target: str = Field(description="checkpoint fine-tuned on the task to forget ('task=path' to label)")
    control: str = Field(description="control: a checkpoint (its head is used) or a task name (a probe head is fit)")
    threshold: float = Field(0.95, gt=0, le=1, description="control must keep this fraction of its pretrained metric")
    n_probe: int = Field(500, ge=4, description="training rows for the control's probe head (control given as a task)")


class DisentangleConfig(_Common):
    """Weight-disentanglement error xi(a1, a2) of Ortiz-Jimenez et al. on a coefficient grid."""

    finetuned: list[str] = Field(min_length=2, max_length=2, description="exactly two fine-tuned checkpoints")
    coefficients: list[float] = Field(default_factory=lambda: list(DEFAULT_COEFFICIENTS),
                                      description="coefficient grid for a1 and a2, values in [-3, 3]")
    n: int = Field(100, ge=2, description="test rows per task")

    @field_validator("coefficients")
    @classmethod
    def _coefficients(cls, v: list[float]) -> list[float]:
        return _grid(v, -3.0, 3.0)


class OrthogonalityConfig(_Evaluated):
    """Kernel orthogonality (Assumption 5.1): the cross-task eNTK block relative to the diagonal blocks, per pair,
    beside the task-vector cosine and the pair's normalised accuracy when checkpoints are given."""

    tasks: list[str] = Field(default_factory=list, description="tasks to compare (default: the checkpoints' tasks)")
    finetuned: list[str] = Field(default_factory=list, description="optional checkpoints, for cosine and pair accuracy")
    n: int = Field(32, ge=2, description="kernel samples per task (drawn from its train split)")
    params: str = Field("all", description="parameters the eNTK differentiates: all | backbone | head | no-embeddings")
    method: str = Field("auto", description="eNTK method: auto | jacobian | jvp | factored")
    sigma: float = Field(1.0, gt=0, description="scale of the random scalar readout head")
    layers: int | None = Field(None, ge=1, description="truncate the backbone after this block")
    pair_accuracy: bool = Field(True, description="merge each pair (lambda on validation) for its normalised accuracy")
    save_model: bool = Field(False, description="unused here (pairs are evaluated in memory)")
