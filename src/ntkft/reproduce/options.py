"""The settings every stage reads (models, stages, token length) and the pieces that stages' own settings share.

Each stage module declares its settings as `class Options(RunOptions)`; config.py composes `ReproConfig` from
them. This module imports no stage and not config.py, so that stages and config.py can both import it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from ..config import StrictModel
from ..finetune.settings import SETTINGS, SettingName, takes_layers
from .registry import STAGES, described


class ModelPlan(StrictModel):
    """One model and the fine-tuning setting its learning curves use (Section 5.1)."""

    name: str = Field(description="model alias, hub id, directory or .gguf file")
    label: str | None = Field(None, description="name of this plan in results (default: the model name); needed "
                              "when one model appears twice, e.g. in two settings")
    setting: SettingName = Field("full", description="fine-tuning setting: " + ", ".join(SETTINGS))
    layers: int | None = Field(None, ge=1, description="truncate the backbone after this block (head/probe)")
    lrs: list[float] = Field([2e-5, 5e-5, 1e-4], min_length=1, description="learning-rate grid, chosen per task "
                             "on the validation split")
    max_steps: int = Field(150, ge=1, description="fine-tuning steps at most (hold-out early stopping ends sooner)")
    batch_size: int = Field(16, ge=1, description="fine-tuning batch size")
    eval_every: int | None = Field(None, ge=1, description="evaluate every k steps (default: each epoch)")
    patience: int = Field(4, ge=1, description="evaluations without improvement before stopping")
    sigma: float = Field(1.0, gt=0, description="scale of the new head's init, W ~ N(0, sigma^2/n), for fine-tuning, "
                         "kernel GD and the spectra's kernels (one kernel for prediction and training); a backbone whose "
                         "features are large (a decoder's last token) needs a smaller head to start near the mean")
    seeds: int | None = Field(None, ge=1, description="this model's seeds per size (default: the run's)")
    sizes: list[int] | None = Field(None, description="this model's training sizes: a subset of the run's sizes "
                                    "that holds the tuning size (default: all of them); a larger model can run fewer")
    kernel_params: Literal["all", "backbone", "head", "no-embeddings"] = Field(
        "all", description="parameters the eNTK differentiates")
    center_output: bool = Field(True, description="fine-tuning and kernel GD start at the constant predictor "
                                "(training mean, log class prior): f = g - g_0 + c (FinetuneConfig.center_output), so "
                                "a new random head's per-row output is not a model that early stopping can keep; off: "
                                "they start at f_PT with the head's bias centred")

    @property
    def id(self) -> str:
        """The plan's name in results, file names and the report."""
        return self.label or self.name

    @field_validator("lrs")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(x <= 0 for x in v):
            raise ValueError("learning rates must be > 0")
        return v

    @model_validator(mode="after")
    def _layers_need_truncating_setting(self) -> ModelPlan:
        if self.layers is not None and "layers" not in SETTINGS[self.setting].options:
            raise ValueError(f"layers applies to settings {', '.join(takes_layers())}, not {self.setting}")
        return self


def _split(v: object) -> object:
    """'a, b' -> ['a', 'b'] (a YAML list or a CLI flag alike)."""
    if isinstance(v, str):
        v = [x.strip() for x in v.split(",") if x.strip()]
    return v


def _known(v: list[str]) -> list[str]:
    """The tasks' canonical names; an unknown task or one listed twice is an error."""
    from ..tasks import get_spec

    out = []
    for t in v:
        try:
            out.append(get_spec(t).name)
        except Exception as e:  # ConfigError / DataError: re-raised as a field error
            raise ValueError(str(e)) from None
    if len(set(out)) != len(out):
        raise ValueError(f"tasks listed twice: {out}")
    return out


# A stage's list of tasks: a comma-separated string or a list, each task known, none twice. (An annotated type,
# not a validator method: pydantic keeps one validator per method name across ReproConfig's bases.)
TaskList = Annotated[list[str], BeforeValidator(_split), AfterValidator(_known)]


class RunOptions(StrictModel):
    """The settings of the whole run, which every stage reads: the base of each stage's `Options`."""

    models: list[ModelPlan] = Field(default_factory=lambda: [ModelPlan(name="minilm-l6"),
                                                             ModelPlan(name="smollm2-135m", setting="head", layers=6)],
                                    min_length=1, description="models and their settings (a list of names or "
                                    "mappings with name, setting, layers, lrs, ...)")
    stages: list[int] = Field(default_factory=lambda: [s.number for s in STAGES], min_length=1,
                              description=f"stages to run ({described()}); the stages they read run too")
    max_length: int = Field(64, ge=4, description="tokens per example after truncation")

    @field_validator("models", mode="before")
    @classmethod
    def _names(cls, v: object) -> object:
        if isinstance(v, str):
            v = [x.strip() for x in v.split(",") if x.strip()]
        return [{"name": x} if isinstance(x, str) else x for x in v] if isinstance(v, list) else v

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if not 1 <= s <= len(STAGES)]
        if bad:
            raise ValueError(f"stages are {described()}, got {bad}")
        return sorted(set(v))
