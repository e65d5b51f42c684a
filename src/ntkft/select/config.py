"""`ntkft select`'s options (one pydantic model) and the candidate list `A,B@K,C` parsed and checked up front.

A candidate is a model spec as `ntkft finetune --model` takes it (alias, hub id, HF folder, .gguf file, or an ntkft
fine-tuned checkpoint / its run folder), optionally `@K`: the backbone cut after block K with a new head (finetune's
`head` setting with `layers=K`); without `@K` the whole model (finetune's `full` setting)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config import StrictModel, make
from ..errors import param_error
from ..models.zoo import ALIASES


@dataclass(frozen=True)
class Candidate:
    """One candidate as finetune would build it: model spec, setting and cut."""

    name: str  # as the user wrote it (e.g. "minilm-l6@2")
    model: str  # the spec handed to load_model (an ntkft run folder resolved to its model/ folder)
    layers: int | None

    @property
    def setting(self) -> str:
        return "full" if self.layers is None else "head"


def resolve_model(spec: str) -> str:
    """The spec load_model reads for `spec`, or a ConfigError naming it; no weights are read (cheap, up front)."""
    if spec in ALIASES:
        return spec
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise param_error("models", f"unknown model '{spec}': no such GGUF file")
        return spec
    if p.is_dir():
        from ..models.checkpoint import checkpoint_dir

        try:
            return str(checkpoint_dir(p))
        except Exception:
            raise param_error("models", f"unknown model '{spec}': the folder holds no Hugging Face config.json "
                                        "(here or in its model/ folder)") from None
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and all(spec.split("/")):
        return spec  # a hub id (needs the network or the hub cache when loaded)
    raise param_error("models", f"unknown model '{spec}': not an alias ({', '.join(ALIASES)}), a hub id (owner/name), "
                                "a model folder, an ntkft checkpoint or a .gguf file")


def parse_candidate(text: str) -> Candidate:
    """`spec` or `spec@K` -> Candidate (ConfigError naming the entry)."""
    spec, at, cut = text.strip().rpartition("@")
    if not at:
        spec = cut
    layers: int | None = None
    if at:
        if not cut.isdigit() or int(cut) < 1:
            raise param_error("models", f"'{text}': the cut after '@' must be a block count >= 1")
        layers = int(cut)
    if not spec:
        raise param_error("models", f"'{text}': empty model name")
    return Candidate(text.strip(), resolve_model(spec), layers)


class SelectConfig(StrictModel):
    """Model selection from the eNTK (issue 28): rank candidates for a task and predict their data needs."""

    models: list[str] = Field(..., min_length=1, description="candidates, comma-separated: alias, hub id, HF folder, "
                              ".gguf file or ntkft checkpoint; 'X@K' = X cut after block K + new head")
    task: str = Field("stsb", description="built-in task name, a task spec file, or a hub/parquet task")
    n: int = Field(512, ge=8, description="labelled examples you have: the size the ranking predicts the error at")
    pool: int = Field(512, ge=32, description="training rows the eNTK is computed on (shared by all candidates)")
    target_error: float | None = Field(None, gt=0, description="predict the n each candidate needs for this test "
                                       "error (MSE for regression, error rate for classification)")
    max_length: int = Field(64, ge=2, description="tokens per input")
    seed: int = Field(0, ge=0, description="seed of the pool rows, the new head (as finetune's) and the subsets")
    sigma: float = Field(1.0, gt=0, description="scale of the new head's init (finetune's --sigma)")
    n_subsets: int = Field(30, ge=2, description="random subsets per size in the predicted curve")
    start: Literal["constant", "model"] = Field("constant", description="where the predicted curve's kernel GD "
                                                "starts: the training mean, or (regression) the model's own step-0 "
                                                "function, new head's spread included, as finetune starts")
    method: str = Field("auto", description="kernel method (auto, jacobian, jvp, factored, sketch)")
    sketch_dim: int | None = Field(None, ge=1, description="method sketch: the sketch dimension")
    skip_failed: bool = Field(False, description="go on when a candidate cannot give an eNTK (it is listed as failed)")

    @field_validator("models", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [x for x in v.split(",")]
        if isinstance(v, list) and any(not str(x).strip() for x in v):
            raise ValueError("an empty entry in the list")
        return v

    @model_validator(mode="after")
    def _names(self) -> SelectConfig:
        names = [m.strip() for m in self.models]
        twice = sorted({m for m in names if names.count(m) > 1})
        if twice:
            raise ValueError(f"models: {', '.join(twice)} listed twice")
        return self

    def candidates(self) -> list[Candidate]:
        """Every candidate parsed and resolved (the first unknown one raises before any work)."""
        return [parse_candidate(m) for m in self.models]

    @classmethod
    def make(cls, **kw: Any) -> SelectConfig:
        return make(cls, **kw)
