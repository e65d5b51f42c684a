"""Data preparation for a fine-tuning run: seeded subsample, hold-out split, test split, encoding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..kernel._common import trim
from ..models import LoadedModel
from ..tasks import TaskData, encode, holdout, load_task, subsample
from ..tasks.spec import TaskSpec
from .config import FinetuneConfig


@dataclass
class Split:
    """Encoded inputs and targets of one split; `h` caches frozen-backbone features (probe setting), `g0` the
    step-0 outputs a centred start subtracts (FinetuneConfig.center_output)."""

    ids: torch.Tensor
    mask: torch.Tensor
    y: torch.Tensor
    h: torch.Tensor | None = None
    g0: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Prepared:
    """Everything a run trains and evaluates on, plus the fingerprint of the rows used."""

    spec: TaskSpec
    train: Split
    val: Split
    test: Split
    num_classes: int
    fingerprint: dict[str, str]

    @property
    def task_type(self) -> str:
        return self.spec.type

    @property
    def out_dim(self) -> int:
        return 1 if self.spec.type == "regression" else self.num_classes


def _split(loaded: LoadedModel, data: TaskData, max_length: int) -> Split:
    enc = encode(loaded.tokenizer, loaded.kind, data, max_length=max_length)
    y = torch.as_tensor(data.labels, dtype=torch.float32 if data.task.type == "regression" else torch.long)
    return Split(enc["input_ids"], enc["attention_mask"], y)


def check_monitor(spec: TaskSpec, monitor: str | None) -> str:
    """The validation metric to monitor; ConfigError naming `monitor` if the task has no such metric."""
    name = monitor or "loss"
    allowed = ["loss", *spec.metrics]
    if name not in allowed:
        raise ConfigError(f"monitor: task '{spec.name}' has no metric '{name}' (choose from {', '.join(allowed)})",
                          param="monitor")
    return name


def load_splits(cfg: FinetuneConfig, data_dir: str | None) -> tuple[TaskSpec, TaskData, TaskData, TaskData]:
    """The raw (train, validation, test) rows of a run, chosen by the config's seed."""
    spec = cfg.task_spec()
    check_monitor(spec, cfg.monitor)
    full = load_task(spec, "train", data_dir)
    if cfg.n_train is not None and cfg.n_train > len(full):
        raise ConfigError(f"n_train: {cfg.n_train} exceeds the {len(full)} training rows of '{spec.name}'", param="n_train")
    train, val = holdout(subsample(full, cfg.n_train, seed=cfg.seed), cfg.val, seed=cfg.seed)
    if spec.type == "classification" and len(np.unique(train.labels)) < 2:
        raise DataError(f"task '{spec.name}': the training split has only one class")
    test_all = load_task(spec, spec.test_split, data_dir)
    test = subsample(test_all, min(cfg.n_test, len(test_all)) if cfg.n_test else None, seed=cfg.seed)
    return spec, train, val, test


def prepare(cfg: FinetuneConfig, loaded: LoadedModel, data_dir: str | None = None) -> Prepared:
    """Load, split and encode the run's data (max_length checked against the model's position limit)."""
    spec, train, val, test = load_splits(cfg, data_dir)
    loaded.check_length(cfg.max_length)
    fp = {"train": train.fingerprint(), "val": val.fingerprint(), "test": test.fingerprint()}
    return Prepared(spec, _split(loaded, train, cfg.max_length), _split(loaded, val, cfg.max_length),
                    _split(loaded, test, cfg.max_length), train.num_classes, fp)


def step_rows(n: int, step: int, per_step: int, seed: int, full_batch: bool) -> torch.Tensor:
    """Training rows of optimiser step `step`: all of them (full-batch GD), or the step's slice of an epoch-seeded
    permutation, so a resumed run replays the same order."""
    if full_batch:
        return torch.arange(n)
    epoch, pos = divmod(step, max(1, -(-n // per_step)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    return perm[pos * per_step:(pos + 1) * per_step]


def by_length(mask: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """Row indices in batches of similar length (stable sort by token count), so that trimming each batch to its
    longest row leaves little padding: evaluation costs the tokens, not rows x max_length."""
    order = torch.argsort(mask.sum(1), stable=True)
    return list(order.split(batch))


def in_row_order(parts: list[torch.Tensor], outs: list[torch.Tensor]) -> torch.Tensor:
    """Stack the outputs of the batches `parts` (row indices, e.g. from `by_length`) back in the rows' order."""
    got = torch.cat(outs)
    out = torch.empty_like(got)
    out[torch.cat(parts).to(got.device)] = got
    return out


def length_split(idx: torch.Tensor, mask: torch.Tensor, saving: float = 0.2) -> list[torch.Tensor]:
    """The rows `idx` sorted by length and cut in two where that removes at least `saving` of the padded token
    slots (one batch's gradient as two micro-batches: the same sum, about a fifth less work on sentence pairs)."""
    lens = mask[idx].sum(1)
    order = torch.argsort(lens, stable=True)
    idx, lens = idx[order], lens[order]
    m = len(idx)
    if m < 4:
        return [idx]
    full = m * int(lens[-1])
    cost = [j * int(lens[j - 1]) + (m - j) * int(lens[-1]) for j in range(2, m - 1)]
    j = int(np.argmin(cost)) + 2
    return [idx[:j], idx[j:]] if cost[j - 2] <= (1 - saving) * full else [idx]


@torch.no_grad()
def cache_features(model: Any, splits: list[Split], device: torch.device, batch: int = 64) -> None:
    """Frozen-backbone features h(x) computed once in eval mode (probe setting)."""
    model.eval()
    for sp in splits:
        parts = by_length(sp.mask, batch)
        sp.h = in_row_order(parts, [model.features(*(t.to(device) for t in trim(sp.ids[ix], sp.mask[ix])))
                                    for ix in parts])
