"""Judging merged models: each task's validation and test rows, its own head, and one backbone whose weights are
set to theta_PT + lam * tau in place (streamed), so a lambda grid costs one model in memory."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError, ModelError
from ..kernel._common import trim
from ..models import LoadedModel, Readout, load_model, truncate_backbone
from ..models.checkpoint import load_finetuned
from ..tasks import TaskData, TaskSpec, encode, get_spec, load_task, subsample, task_metrics
from .merge import load_into, module_names
from .sources import Checkpoint, Head, Pretrained
from .vector import TaskVector

log = logging.getLogger(__name__)

HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "pearson": True, "spearman": True, "mse": False, "loss": False}


@dataclass
class Encoded:
    """Rows of one split, tokenised for the model."""

    ids: torch.Tensor
    mask: torch.Tensor
    y: torch.Tensor
    fingerprint: str

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def head_rows(self, n: int) -> Encoded:
        """The first `n` rows (already a seeded random order)."""
        return Encoded(self.ids[:n], self.mask[:n], self.y[:n], self.fingerprint + f"[:{n}]")


def encode_rows(loaded: LoadedModel, data: TaskData, max_length: int) -> Encoded:
    """Encode task rows for the model that evaluates them."""
    enc = encode(loaded.tokenizer, loaded.kind, data, max_length=max_length)
    dtype = torch.float32 if data.task.type == "regression" else torch.long
    return Encoded(enc["input_ids"], enc["attention_mask"], torch.as_tensor(np.asarray(data.labels), dtype=dtype),
                   data.fingerprint())


def default_metric(spec: TaskSpec, metric: str | None) -> str:
    """The metric a task is compared on: `metric` if the task has it, else accuracy / pearson."""
    if metric is None:
        return "accuracy" if spec.type == "classification" else "pearson"
    allowed = [*spec.metrics, "loss"]
    if metric not in allowed:
        raise ConfigError(f"metric: task '{spec.name}' has no metric '{metric}' (choose from {', '.join(allowed)})",
                          param="metric")
    return metric


def score(task_type: str, out: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Loss (MSE or cross-entropy) and the task's metrics for outputs `out` (N, C)."""
    out = out.float()
    if task_type == "regression":
        pred = out.reshape(-1)
        loss = float(torch.mean((pred - y.float()) ** 2))
        if not math.isfinite(loss):
            return {"loss": loss}
        return {"loss": loss, **task_metrics("regression", pred.numpy(), y.numpy())}
    loss = float(nn.functional.cross_entropy(out, y.long()))
    if not math.isfinite(loss):
        return {"loss": loss}
    return {"loss": loss, **task_metrics("classification", out.numpy(), y.numpy(), num_classes)}


def error_of(task_type: str, metrics: dict[str, float]) -> tuple[str, float]:
    """The error Corollary 1 speaks of: MSE for regression, 1 - accuracy for classification."""
    if task_type == "regression":
        return "mse", metrics.get("mse", float("nan"))
    return "error_rate", 1.0 - metrics.get("accuracy", float("nan"))


@dataclass
class TaskEval:
    """One task as merged models are judged on it: its head, validation and test rows, and where they came from."""

    name: str
    spec: TaskSpec
    head: Head
    val: Encoded
    test: Encoded
    metric: str
    notes: list[str] = field(default_factory=list)

    @property
    def type(self) -> str:
        return self.spec.type

    @property
    def num_classes(self) -> int:
        return len(self.spec.labels or []) if self.type == "classification" else 0


def _run_config(ck_dir: Path) -> dict[str, Any] | None:
    """The FinetuneConfig of the run folder a checkpoint sits in (OUT/model -> OUT/config.json)."""
    f = ck_dir.parent / "config.json"
    if ck_dir.name != "model" or not f.is_file():
        return None
    try:
        cfg = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) and "task" in cfg else None


def task_spec(ck: Checkpoint) -> TaskSpec:
    """The task a checkpoint was fine-tuned on: from its run folder's config (so data-file tasks work too), else by
    name (ntkft.json or `task=path`)."""
    cfg = _run_config(ck.dir)
    if cfg is not None and cfg.get("task") == ck.task:
        try:
            from ..finetune import FinetuneConfig

            return FinetuneConfig(**cfg).task_spec()
        except Exception as e:  # a config of another ntkft version: the task name alone
            log.debug("%s: config.json not readable as FinetuneConfig (%s)", ck.dir, e)
    return get_spec(ck.task)  # type: ignore[arg-type]


def _trainer_val(cfg: dict[str, Any], data_dir: str | None) -> TaskData:
    """The validation rows the fine-tuning run held out (its early-stopping split), drawn as the trainer drew them."""
    from ..finetune import FinetuneConfig, load_splits

    return load_splits(FinetuneConfig(**cfg), data_dir)[2]


def validation_rows(spec: TaskSpec, ck: Checkpoint | None, n: int, seed: int, data_dir: str | None) -> tuple[TaskData, str]:
    """Rows for choosing lambda, never the test rows: the fine-tuning run's own hold-out when the checkpoint sits in
    an ntkft run folder, else the task's validation split when that is not its test split, else train rows."""
    cfg = _run_config(ck.dir) if ck is not None else None
    if cfg is not None and cfg.get("task") == (ck.task if ck is not None else None):
        try:
            val = _trainer_val(cfg, data_dir)
            return subsample(val, min(n, len(val)), seed=seed), "the fine-tuning run's hold-out split"
        except Exception as e:  # an older or foreign config: fall back to the task's own splits
            log.warning("could not redraw the hold-out split of %s (%s); using the task's splits", ck.dir, e)  # type: ignore[union-attr]
    names = spec.split_names()
    if "validation" in names and spec.test_split != "validation":
        val = load_task(spec, "validation", data_dir)
        return subsample(val, min(n, len(val)), seed=seed), "the task's validation split"
    train = load_task(spec, "train", data_dir)
    return (subsample(train, min(n, len(train)), seed=seed),
            "train rows (no separate validation split; they may overlap the fine-tuning data)")


def test_rows(spec: TaskSpec, n: int, seed: int, data_dir: str | None) -> TaskData:
    """The seeded test rows of a task used for every evaluation."""
    test = load_task(spec, spec.test_split, data_dir)
    return subsample(test, min(n, len(test)), seed=seed)


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' asked for, but no CUDA device is available", param="device")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


class Session:
    """The pretrained backbone in memory, task data, and evaluation of theta_PT + lam * tau with any task's head."""

    def __init__(self, base: Pretrained, kind: str | None = None, device: str = "auto", batch_size: int = 64,
                 max_length: int = 64, seed: int = 0, data_dir: str | None = None, progress: bool = True) -> None:
        self.base, self.batch_size, self.max_length, self.seed = base, batch_size, max_length, seed
        self.data_dir, self.progress = data_dir, progress
        self.device = _device(device)
        self.loaded = load_model(str(base.dir))
        if kind and kind != self.loaded.kind:
            from ..models.checkpoint import _with_kind

            self.loaded = _with_kind(self.loaded, kind)
        self.loaded.backbone.to(self.device).eval()
        self._names: dict[str, str] | None = None
        self._state: tuple[str, float] | None = None
        self._truncated: dict[int, nn.Module] = {}

    # ------------------------------------------------------------------ weights

    def set_weights(self, tv: TaskVector | None, lam: float) -> None:
        """Backbone weights theta_PT + lam * tau (tv None or lam 0: theta_PT)."""
        key = ("" if tv is None or lam == 0.0 else repr([(c, ck.key) for c, ck in tv.terms]), 0.0 if tv is None else float(lam))
        if key == self._state:
            return
        zero = TaskVector(self.base, ())
        vec = tv if tv is not None else zero
        if self._names is None:
            self._names = module_names(self.loaded.backbone, zero)
        load_into(self.loaded.backbone, vec, 0.0 if tv is None else float(lam), self._names)
        self._state, self._truncated = key, {}

    def weights_fingerprint(self) -> str:
        from ..models import fingerprint

        self.set_weights(None, 0.0)
        return fingerprint(self.loaded.backbone)

    # ------------------------------------------------------------------ tasks

    def task(self, ck: Checkpoint, n_val: int, n_test: int, metric: str | None = None) -> TaskEval:
        """The evaluation data of the task `ck` was fine-tuned on, with `ck`'s own head."""
        if ck.task is None:
            raise ConfigError(f"finetuned: {ck.source} does not say which task it was fine-tuned on (no ntkft.json); "
                              "write it as task=path")
        if ck.head is None:
            raise ModelError(f"{ck.dir}: has no head.safetensors; evaluating on '{ck.task}' needs the task's own head")
        spec = task_spec(ck)
        val, where = validation_rows(spec, ck, n_val, self.seed, self.data_dir)
        test = test_rows(spec, n_test, self.seed, self.data_dir)
        self._check_head(ck.head, spec)
        notes = [f"validation rows: {where}"]
        return TaskEval(ck.name, spec, ck.head, encode_rows(self.loaded, val, self.max_length),
                        encode_rows(self.loaded, test, self.max_length), default_metric(spec, metric), notes)

    def _check_head(self, head: Head, spec: TaskSpec) -> None:
        want = 1 if spec.type == "regression" else len(spec.labels or [])
        if head.out_dim != want:
            raise ModelError(f"{head.file}: head has {head.out_dim} outputs but task '{spec.name}' needs {want}")
        if head.weight.shape[1] != self.loaded.hidden_size:
            raise ModelError(f"{head.file}: head width {head.weight.shape[1]} does not fit the pretrained model's "
                             f"hidden size {self.loaded.hidden_size}")

    # ------------------------------------------------------------------ forward passes

    def _backbone(self, layers: int | None) -> nn.Module:
        if layers is None or layers >= self.loaded.num_layers:
            return self.loaded.backbone
        if layers not in self._truncated:
            self._truncated[layers] = truncate_backbone(self.loaded.backbone, layers).to(self.device).eval()
        return self._truncated[layers]

    def readout(self, head: Head) -> Readout:
        """The current backbone with `head` on top (shares the backbone's weights)."""
        r = Readout(self._backbone(head.layers), self.loaded.kind, self.loaded.hidden_size, out_dim=head.out_dim)
        with torch.no_grad():
            r.head.weight.copy_(head.weight.to(r.head.weight.dtype))
            r.head.bias.copy_(head.bias.to(r.head.bias.dtype))
        return r.to(self.device).eval()

    @torch.no_grad()
    def outputs(self, model: nn.Module, enc: Encoded) -> torch.Tensor:
        """f(x) as (N, C) float32 on the CPU, in row order (batches sorted by length for speed)."""
        model.eval()
        order = torch.argsort(enc.mask.sum(1), stable=True)
        out = torch.empty(0)
        parts = []
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            ids, mask = trim(enc.ids[idx], enc.mask[idx])
            f = model(ids.to(self.device), mask.to(self.device))
            parts.append(f.reshape(len(idx), -1).float().cpu())
        out = torch.cat(parts)
        res = torch.empty_like(out)
        res[order] = out
        if not torch.isfinite(res).all():
            raise DataError("the model produced NaN or inf outputs (a lambda too large for this model?)")
        return res

    def evaluate(self, t: TaskEval, split: str, head: Head | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """(outputs, metrics) of the current backbone with the task's head on its `split` rows."""
        enc = t.val if split == "val" else t.test
        out = self.outputs(self.readout(head or t.head), enc)
        return out, score(t.type, out, enc.y, t.num_classes or 2)

    def finetuned(self, ck: Checkpoint, t: TaskEval) -> dict[str, dict[str, float]]:
        """Metrics of the fine-tuned model itself (its own backbone and head) on validation and test."""
        _, r, _ = load_finetuned(ck.dir)
        r.to(self.device).eval()
        return {s: score(t.type, self.outputs(r, e), e.y, t.num_classes or 2) for s, e in (("val", t.val), ("test", t.test))}
