"""The reproduction's one config: which models, tasks, sizes and stages (YAML, Python and CLI alike)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..config import StrictModel
from ..finetune.settings import SETTINGS, SettingName, takes_layers
from .registry import STAGES, described

SPECTRUM_TASKS = ["semrel", "sts12", "stsb", "amazon_polarity", "mrpc", "rte", "cr", "sst2"]
CURVE_TASKS = ["semrel", "sts12", "stsb", "amazon_polarity", "mrpc", "rte"]
TASKVEC_TASKS = ["cr", "sst2", "rte", "mrpc"]


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


class ReproConfig(StrictModel):
    """The paper's Section 7 as five stages: spectra, learning curves, rankings, stopping, task vectors."""

    models: list[ModelPlan] = Field(default_factory=lambda: [ModelPlan(name="minilm-l6"),
                                                             ModelPlan(name="smollm2-135m", setting="head", layers=6)],
                                    min_length=1, description="models and their settings (a list of names or "
                                    "mappings with name, setting, layers, lrs, ...)")
    stages: list[int] = Field(default_factory=lambda: [s.number for s in STAGES], min_length=1,
                              description=f"stages to run ({described()}); the stages they read run too")
    max_length: int = Field(64, ge=4, description="tokens per example after truncation")
    # stage 1
    spectrum_tasks: list[str] = Field(default_factory=lambda: list(SPECTRUM_TASKS), min_length=1,
                                      description="tasks whose eNTK spectrum is measured")
    kernel_n: int = Field(100, ge=8, description="random training samples per spectrum kernel (paper: 100)")
    draws: int = Field(3, ge=1, description="independent draws per task (paper: 3)")
    ci_draws: int = Field(200, ge=10, description="subsamples for the beta confidence interval")
    # stage 2
    curve_tasks: list[str] = Field(default_factory=lambda: list(CURVE_TASKS), min_length=1,
                                   description="tasks with learning curves")
    sizes: list[int] = Field([32, 64, 128, 256, 512], min_length=2, description="training sizes (before the "
                             "hold-out split is carved off)")
    seeds: int = Field(3, ge=1, description="seeds per training size (paper: 3)")
    val: float = Field(0.2, gt=0, lt=1, description="hold-out fraction carved from each training sample")
    n_test: int = Field(500, ge=10, description="test examples per task (seeded subsample)")
    tune_size: int | None = Field(None, description="training size for the learning-rate choice (default: the "
                                  "middle size)")
    track_test: bool = Field(True, description="score the test split at every evaluation too, for the oracle "
                             "stopping step (one extra test pass per evaluation)")
    workers: int = Field(1, ge=1, le=64, description="fine-tuning cells run in this many processes at once, each "
                         "on its share of the threads (results agree with 1 worker to rounding: a thread count "
                         "changes summation order, so a run may resume with another value)")
    kgd: bool = Field(True, description="kernel gradient descent on the eNTK beside each measured curve")
    kgd_max_n: int = Field(256, ge=8, description="largest training size of the kernel-GD curve")
    kgd_n_test: int = Field(200, ge=10, description="test examples of the kernel-GD curve")
    kgd_seeds: int = Field(1, ge=1, description="seeds of the kernel-GD curve")
    kgd_t_max: int = Field(100000, ge=10, description="kernel-GD steps at most (step 1/lambda_1)")
    # stage 3
    efficiency_fraction: float = Field(0.9, gt=0, lt=1, description="sample efficiency: the training size "
                                       "needed to reach this fraction of the task's best score")
    permutations: int = Field(10000, ge=100, description="permutations for the rank-correlation p-value")
    # stage 5
    taskvec_tasks: list[str] = Field(default_factory=lambda: list(TASKVEC_TASKS), min_length=2,
                                     description="tasks of the task-vector experiment (paper Figure 3)")
    taskvec_model: str | None = Field(None, description="model for task vectors (default: the first model)")
    taskvec_n_train: int = Field(256, ge=8, description="training samples per task for the task vectors")
    taskvec_steps: int = Field(100, ge=1, description="fine-tuning steps per task vector")
    taskvec_lr: float = Field(5e-5, gt=0, description="learning rate of the task-vector fine-tunes")
    taskvec_n_test: int = Field(300, ge=10, description="test examples per task for the merged model")
    taskvec_n_val: int = Field(100, ge=4, description="validation rows per task for the lambda choice")
    taskvec_lambdas: list[float] = Field([0.25, 0.5, 0.75, 1.0], min_length=1, description="lambda grid of the "
                                         "task addition (one lambda for all tasks, chosen on validation)")
    taskvec_n_linear: int = Field(64, ge=0, description="test rows per task for the linearised prediction of the "
                                  "merged model (Corollary 2; 0 = off)")
    taskvec_kernel_n: int = Field(24, ge=4, description="samples per task for the kernel-orthogonality scores")

    @field_validator("models", mode="before")
    @classmethod
    def _names(cls, v):
        if isinstance(v, str):
            v = [x.strip() for x in v.split(",") if x.strip()]
        return [{"name": x} if isinstance(x, str) else x for x in v] if isinstance(v, list) else v

    @field_validator("spectrum_tasks", "curve_tasks", "taskvec_tasks", mode="before")
    @classmethod
    def _task_list(cls, v):
        if isinstance(v, str):
            v = [x.strip() for x in v.split(",") if x.strip()]
        return v

    @field_validator("spectrum_tasks", "curve_tasks", "taskvec_tasks")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
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

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if not 1 <= s <= len(STAGES)]
        if bad:
            raise ValueError(f"stages are {described()}, got {bad}")
        return sorted(set(v))

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if any(s < 8 for s in v):
            raise ValueError("training sizes must be >= 8 (the hold-out split needs rows)")
        return sorted(set(v))

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

    @property
    def tuning_size(self) -> int:
        """The training size the learning rate is chosen at."""
        return self.tune_size or self.sizes[len(self.sizes) // 2]

    def plan_sizes(self, plan: ModelPlan) -> list[int]:
        """The training sizes of one model's curves (its own subset, or the run's)."""
        return sorted(set(plan.sizes)) if plan.sizes is not None else list(self.sizes)

    def plan_seeds(self, plan: ModelPlan) -> int:
        """Seeds per training size of one model's curves (its own, or the run's)."""
        return plan.seeds if plan.seeds is not None else self.seeds

    @property
    def kgd_sizes(self) -> list[int]:
        """Training sizes of the kernel-GD curve."""
        return [s for s in self.sizes if s <= self.kgd_max_n]


def quick_config_path() -> Path:
    """configs/quick.yaml of the source checkout (`ntkft reproduce --quick`, `make demo`)."""
    path = Path(__file__).resolve().parents[3] / "configs" / "quick.yaml"
    if not path.is_file():
        from ..errors import ConfigError

        raise ConfigError(f"{path}: the quick config ships with the source checkout; use --config FILE instead")
    return path
