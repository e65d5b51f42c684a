"""What every stage shares: the config, loaded models and their fingerprints, task data, stage run folders."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from .._runs import RunFolder, digest
from ..models import LoadedModel, Readout, fingerprint, load_model
from ..tasks import TaskData, get_spec, load_task
from .options import ModelPlan, RunOptions

Opts = TypeVar("Opts", bound=RunOptions)


def slug(name: str) -> str:
    """A file-name-safe form of a model spec."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


@dataclass
class Context:
    """One reproduction run: config, output root, data directory, and caches of models and data.

    `cfg` is the run's ReproConfig, typed here as the run-wide part (this module cannot import config.py, which
    imports the stages); a stage reads its own settings, statically typed, as `ctx.options(Options)`."""

    cfg: RunOptions
    root: Path
    data_dir: str | None = None
    progress: bool = True
    overwrite: bool = False
    _models: dict[str, LoadedModel] = field(default_factory=dict)
    _fps: dict[Any, str] = field(default_factory=dict)
    _data: dict[tuple[str, str], TaskData] = field(default_factory=dict)
    stage_keys: dict[str, str] = field(default_factory=dict)
    top: RunFolder | None = None  # the run folder of the whole reproduction; stage folders are its files

    def options(self, cls: type[Opts]) -> Opts:
        """The config as the settings class `cls` (a stage's `Options`; ReproConfig inherits every one of them)."""
        if not isinstance(self.cfg, cls):
            raise TypeError(f"the config ({type(self.cfg).__name__}) lacks {cls.__module__}.{cls.__qualname__}: "
                            "a stage's Options must be a base of ReproConfig (config.py)")
        return self.cfg

    # ------------------------------------------------------------------ models

    def loaded(self, name: str) -> LoadedModel:
        """The backbone `name`, loaded once per run."""
        if name not in self._models:
            self._models[name] = load_model(name)
        return self._models[name]

    def readout(self, plan: ModelPlan, out_dim: int = 1, seed: int = 0, sigma: float = 1.0) -> tuple[LoadedModel, Readout]:
        """The model a plan fine-tunes, as the theory's readout: truncated after `layers` blocks if set, its head's
        init scaled by `sigma`."""
        loaded = self.loaded(plan.name)
        if plan.layers is not None:
            loaded = loaded.truncate(plan.layers)
        return loaded, Readout.from_loaded(loaded, out_dim=out_dim, sigma=sigma, seed=seed)

    def entk_model(self, plan: ModelPlan) -> tuple[LoadedModel, Readout, str]:
        """The model whose eNTK predicts the plan's fine-tuning, and the parameters it differentiates: the model
        the plan fine-tunes (same truncation, head init scale `sigma`, head seed 0, scalar readout) and the
        parameters it trains (the head alone for a frozen-backbone probe). Spectra and kernel GD both use it, so
        beta describes the kernel the curves are run on."""
        loaded, readout = self.readout(plan, sigma=plan.sigma)
        return loaded, readout, kernel_params(plan)

    def model_fingerprint(self, name: str) -> str:
        """Fingerprint of the pretrained weights (part of every unit's key), taken on one thread: the float64
        sums inside `fingerprint` are reduced in a thread-count-dependent order, and a run must resume under
        another OMP_NUM_THREADS (or on another machine) without recomputing."""
        if name not in self._fps:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                self._fps[name] = fingerprint(self.loaded(name).backbone)
            finally:
                torch.set_num_threads(threads)
        return self._fps[name]

    # ------------------------------------------------------------------ data

    def task_data(self, task: str, split: str | None = None) -> TaskData:
        """One split of a task (default: its test split), read once per run."""
        spec = get_spec(task)
        split = split or spec.test_split
        if (spec.name, split) not in self._data:
            self._data[(spec.name, split)] = load_task(spec, split, self.data_dir)
        return self._data[(spec.name, split)]

    def data_fp(self, task: str) -> str:
        """Fingerprint of a task's train and test splits: stored in every unit drawn from them, so a changed
        data file is recomputed rather than read back."""
        spec = get_spec(task)
        key = (spec.name, "_fp")
        if key not in self._fps:
            self._fps[key] = digest({s: self.task_data(task, s).fingerprint()
                                     for s in dict.fromkeys(["train", spec.test_split])})
        return self._fps[key]

    def unit_fp(self, model: str, task: str, **extra: Any) -> str:
        """The key of one cached unit: the weights and data it was computed from and the settings that shape
        it beyond its file name. A unit whose key differs is recomputed, never read back."""
        return digest({"weights": self.model_fingerprint(model), "data": self.data_fp(task), **extra})

    def stage_key(self, stage: str, fields: dict[str, Any], upstream: Sequence[str] = ()) -> dict[str, Any]:
        """A stage folder's resume key: the config fields every unit of the stage shares and the upstream stages'
        keys. Models, tasks, sizes, seeds and draws are not in it: units are named by them and carry their own
        key (weights, data, setting), so extending a list reuses every finished unit."""
        key = {"stage": stage, "config": fields, "max_length": self.cfg.max_length,
               "upstream": {u: self.stage_keys.get(u) for u in upstream}}
        self.stage_keys[stage] = digest(key)
        return key

    def open_stage(self, stage: str, key: dict[str, Any], derived: bool = False) -> RunFolder:
        """Claim `root/stage` as a run folder of kind `reproduce-<stage>` (resumes on the same key). A derived
        stage (cheap arithmetic on other stages' results) is simply replaced when its key changes."""
        if self.top is not None:
            self.top.path(stage)
        rf = RunFolder(self.root / stage, f"reproduce-{stage}", key, self.overwrite or derived)
        rf.open()
        return rf


def kernel_params(plan: ModelPlan) -> str:
    """The parameters the plan trains, whose eNTK the spectra and the kernel-GD curve use: the head alone for a
    frozen-backbone probe (then kernel GD is exactly gradient descent on the probe), else `kernel_params`."""
    return "head" if plan.setting == "probe" else plan.kernel_params


@contextmanager
def exclusive(root: Path) -> Iterator[None]:
    """Hold the run folder's lock for the run (the one run-folder lock of `_runs`): two processes must never write
    one run folder."""
    from .._runs import locked

    with locked(root):
        yield


def read_json(path: Path) -> Any:
    """A JSON file, or None if it does not exist (a unit not finished yet)."""
    return json.loads(path.read_text()) if path.is_file() else None


def load_tensors(path: Path, data_fp: str | None = None) -> dict[str, torch.Tensor] | None:
    """A safetensors unit, or None if it does not exist or was computed from other data (`data_fp`)."""
    if not path.is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    if data_fp is not None:
        with safe_open(str(path), "pt") as fh:
            if (fh.metadata() or {}).get("data") != data_fp:
                return None
    return load_file(path)


def read_unit(path: Path, data_fp: str) -> dict[str, Any] | None:
    """A JSON unit, or None if it does not exist or was computed from other data."""
    got = read_json(path)
    return got if isinstance(got, dict) and got.get("data_fp") == data_fp else None
