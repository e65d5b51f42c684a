"""Stage 2: learning curves (paper Figure 2 and 10) with the learning rate chosen on validation data, the
kernel-GD curve on the eNTK beside each, scale-free measures, and log-log slopes against eq (30)'s rate.

Units, each cached as one file: a fine-tuning cell (model, task, size, seed, lr) and a kernel-GD kernel
(model, task, seed). The learning rate of each (model, task) is the grid value with the best validation
loss at the tuning size and seed 0; that run is reused as the curve's cell."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import Field, field_validator
from tqdm.auto import tqdm

from .._results import ResultModel
from .._runs import RunFolder
from ..errors import DataError, NtkftError
from ..kernel import kernel_matrix
from ..tasks import encode, get_spec, subsample
from . import plots
from .context import Context, kernel_params, load_tensors, read_unit, slug
from .kgd import KgdPoint
from .kgd import curve as kgd_curve
from .options import ModelPlan, RunOptions, TaskList
from .paper import label
from .spectra import SpectraResult
from .tables import RunView, Section, Table, fmt

if TYPE_CHECKING:
    from ..finetune import FinetuneConfig, FinetuneResult

FILES = ("curves.csv", "cells/", "kgd/")
Value = float | int | None  # one number of a metrics record or a history row (int: a step count)

log = logging.getLogger(__name__)

CURVE_TASKS = ["semrel", "sts12", "stsb", "amazon_polarity", "mrpc", "rte"]


class Options(RunOptions):
    """The settings of stage 2 (part of ReproConfig); stopping and task vectors read `val` and the kernel-GD ones."""

    curve_tasks: TaskList = Field(default_factory=lambda: list(CURVE_TASKS), min_length=1,
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

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if any(s < 8 for s in v):
            raise ValueError("training sizes must be >= 8 (the hold-out split needs rows)")
        return sorted(set(v))

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


# ---------------------------------------------------------------- one fine-tuning cell


def finetune_config(ctx: Context, plan: ModelPlan, task: str, size: int, seed: int, lr: float) -> FinetuneConfig:
    """The FinetuneConfig of one cell (hold-out early stopping on the validation loss, no checkpoint)."""
    from ..config import make
    from ..finetune import FinetuneConfig

    c = ctx.options(Options)
    return make(FinetuneConfig, model=plan.name, task=task, setting=plan.setting, layers=plan.layers, n_train=size,
                val=c.val, n_test=c.n_test, max_length=c.max_length, seed=seed, optimizer="adamw",
                lr=lr, batch_size=plan.batch_size, max_steps=plan.max_steps, eval_every=plan.eval_every,
                patience=plan.patience, sigma=plan.sigma, center_output=plan.center_output, save_model=False)


def _fit(ft_cfg: FinetuneConfig, data_dir: str | None, track_test: bool) -> FinetuneResult:
    """Fine-tune one config; with `track_test`, the test split is also scored at every evaluation (for the
    oracle stopping step). Falls back to plain `finetune` if the trainer does not offer the hooks."""
    from ..finetune import Trainer, finetune

    if not track_test or not all(hasattr(Trainer, a) for a in ("_log", "evaluate", "test")):
        return finetune(ft_cfg, None, data_dir=data_dir, progress=False)

    class OracleTrainer(Trainer):
        def _log(self, rec: dict[str, Any]) -> None:
            rec = {**rec, **{f"test_{k}": v for k, v in self.evaluate(self.test).items()}}
            super()._log(rec)

    return OracleTrainer(ft_cfg, None, data_dir, False).fit()


def _tuning_key(cell: Mapping[str, Any]) -> tuple[float, float]:
    """Order of learning-rate runs: best validation loss, then the best after step 0. Runs that all keep step 0
    (with a centred start, the same constant predictor) tie exactly on the first; the second says which learning
    rate got closer to beating it, instead of the grid's order deciding."""
    after = [r["val_loss"] for r in cell.get("history", []) if r.get("step", 0) > 0
             and isinstance(r.get("val_loss"), (int, float)) and math.isfinite(r["val_loss"])]
    return cell["best_val"], min(after, default=math.inf)


def baseline(task_type: str, y_train: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """What a model that ignores the input scores: the training mean (regression) or majority class."""
    y_train, y_test = np.asarray(y_train, dtype=np.float64), np.asarray(y_test, dtype=np.float64)
    if task_type == "regression":
        return {"var_test": float(np.var(y_test)), "mse_mean": float(np.mean((y_test - y_train.mean()) ** 2))}
    major = int(np.bincount(y_train.astype(np.int64)).argmax())
    acc = float(np.mean(y_test == major))
    f1 = 0.0 if major == 0 else float(2 * acc / (1 + acc))  # binary F1 of always predicting class 1
    return {"accuracy_majority": acc, "f1_majority": f1, "majority": major}


def skill(task_type: str, test: Mapping[str, Any], base: Mapping[str, Any]) -> float:
    """Scale-free score: R^2 = 1 - MSE/Var(y_test) (regression); (acc - majority)/(1 - majority) (classification)."""
    if task_type == "regression":
        return 1.0 - test["mse"] / base["var_test"] if base["var_test"] > 0 else float("nan")
    m = base["accuracy_majority"]
    return (test["accuracy"] - m) / (1 - m) if m < 1 else float("nan")


def oracle(history: list[dict[str, Any]], task_type: str) -> tuple[int | None, float | None]:
    """(step, value) of the best test score seen during training: min MSE or max accuracy."""
    key = "test_mse" if task_type == "regression" else "test_accuracy"
    pts = [(r["step"], r[key]) for r in history if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if not pts:
        return None, None
    best = min(pts, key=lambda p: p[1]) if task_type == "regression" else max(pts, key=lambda p: p[1])
    return int(best[0]), float(best[1])


class Baseline(ResultModel):
    """What a model that ignores its input scores on the test rows (`baseline`): regression or classification."""

    var_test: float | None = None
    mse_mean: float | None = None
    accuracy_majority: float | None = None
    f1_majority: float | None = None
    majority: int | None = None


class Cell(ResultModel):
    """One fine-tuning run (model, task, size, seed, lr) summarised: stops, metrics, baseline, score, history.
    A failed run (e.g. a non-finite loss at a too-large learning rate) has `failed` and no results."""

    model: str
    task: str
    type: str
    setting: str
    layers: int | None
    size: int
    seed: int
    lr: float
    n_train: int
    n_val: int
    n_test: int
    batch_size: int
    baseline: Baseline
    failed: str | None = Field(None, exclude_if=lambda v: v is None)  # written only when the run failed
    best_step: int | None = None
    stopped_step: int | None = None
    stop_reason: str | None = None
    best_val: float | None = None
    monitor: str | None = None
    val_best: dict[str, Value] = Field(default_factory=dict)
    test_best: dict[str, Value] = Field(default_factory=dict)
    test_last: dict[str, Value] = Field(default_factory=dict)
    seconds: float | None = None
    steps_per_epoch: int | None = None
    oracle_step: int | None = None  # the evaluation with the best test score (track_test)
    oracle_value: float | None = None
    warnings: list[str] = Field(default_factory=list)
    skill: float | None = None
    history: list[dict[str, Value]] = Field(default_factory=list)
    data_fp: str | None = None  # the unit's key, checked when it is read back
    tuning: bool = False  # a learning-rate grid run that is not one of the curve's cells

    @property
    def ok(self) -> bool:
        """The run finished (not a failed grid point)."""
        return self.failed is None


def finetune_cell(ctx: Context, plan: ModelPlan, task: str, size: int, seed: int, lr: float) -> Cell:
    """Fine-tune one cell and summarise it: stops, validation/test metrics, the baseline and the scale-free score."""
    from ..finetune.data import load_splits

    spec = get_spec(task)
    ft_cfg = finetune_config(ctx, plan, task, size, seed, lr)
    _, train, val, test = load_splits(ft_cfg, ctx.data_dir)
    base = baseline(spec.type, train.labels, test.labels)
    cell = Cell(model=plan.id, task=spec.name, type=spec.type, setting=plan.setting, layers=plan.layers, size=size,
                seed=seed, lr=lr, n_train=len(train), n_val=len(val), n_test=len(test), batch_size=plan.batch_size,
                baseline=Baseline(**base))
    try:
        res = _fit(ft_cfg, ctx.data_dir, ctx.options(Options).track_test)
    except NtkftError as e:  # e.g. a non-finite loss at a too-large learning rate: a failed grid point
        return cell.model_copy(update={"failed": str(e)})
    hist = [{k: v for k, v in r.items() if k == "step" or k.startswith(("val_", "test_"))} for r in res.history]
    o_step, o_val = oracle(res.history, spec.type)
    steps_per_epoch = max(1, math.ceil(len(train) / plan.batch_size))
    return Cell.from_dict(cell.to_dict() | {
        "best_step": res.best_step, "stopped_step": res.stopped_step, "stop_reason": res.stop_reason,
        "best_val": res.best_val, "monitor": res.monitor, "val_best": res.val_best, "test_best": res.test_best,
        "test_last": res.test_last, "seconds": res.seconds, "steps_per_epoch": steps_per_epoch,
        "oracle_step": o_step, "oracle_value": o_val, "warnings": list(getattr(res, "warnings", [])),
        "skill": skill(spec.type, res.test_best, base), "history": hist}, f"{plan.id} {task} n={size} seed={seed}")


# ---------------------------------------------------------------- the stage


class Slope(ResultModel):
    """OLS slope of log(error) on log(size) with a t interval (`loglog_slope`)."""

    slope: float
    low: float
    high: float
    level: float
    points: int
    r2: float


class TaskCurve(ResultModel):
    """One (model, task) learning curve: per size the mean and sd over seeds, and the kernel-GD curve."""

    model: str
    task: str
    type: str
    setting: str
    lr: float | None
    sizes: list[int]
    metrics: dict[str, list[float]]  # metric -> mean over seeds per size (mse, nmse, pearson, ..., skill)
    sd: dict[str, list[float]]
    kgd_sizes: list[int] = Field(default_factory=list)
    kgd: dict[str, list[float]] = Field(default_factory=dict)  # metric -> mean over kgd seeds per size
    slope: Slope | None = None  # measured log-log slope of the error with an interval
    kgd_slope: Slope | None = None
    kgd_slope_target: Slope | None = None  # slope of the kernel-GD MSE on the regression targets
    worse_than_baseline: int = 0


class GridPoint(ResultModel):
    """One learning rate of the grid at the tuning size: its best validation loss and score, or why it failed."""

    lr: float
    best_val: float | None
    skill: float | None
    failed: str | None


class LrChoice(ResultModel):
    """The learning rate chosen for one (model, task) and the grid it was chosen from."""

    lr: float | None
    size: int
    criterion: str
    grid: list[GridPoint]


class CurvesResult(ResultModel):
    """Stage 2's result: the learning-rate choice, every cell, the curves and the kernel-GD points."""

    lr_choice: dict[str, dict[str, LrChoice]]
    curves: list[TaskCurve]
    cells: list[Cell]
    kgd_points: list[KgdPoint]
    inputs: str | None = None  # digest of everything the result depends on (the stage's resume check)

    def get(self, model: str, task: str) -> TaskCurve | None:
        """The curve of one (model, task), if measured."""
        return next((c for c in self.curves if c.model == model and c.task == task), None)


Result = CurvesResult  # the stage protocol's name (registry.py)


def _fields(ctx: Context) -> dict[str, Any]:
    """The config fields every unit of the stage shares (the stage folder's key)."""
    c = ctx.options(Options)
    return {"val": c.val, "n_test": c.n_test, "track_test": c.track_test, "kgd_max_n": c.kgd_max_n,
            "kgd_n_test": c.kgd_n_test}


def _inputs(ctx: Context) -> str:
    """Digest of everything the stage's aggregated result depends on (the lists included)."""
    from .._runs import digest

    c = ctx.options(Options)
    return digest({"units": ctx.stage_keys.get("curves"), "models": [m.model_dump() for m in c.models],
                   "tasks": c.curve_tasks, "sizes": c.sizes, "seeds": c.seeds, "tune_size": c.tuning_size,
                   "kgd": c.kgd, "kgd_seeds": c.kgd_seeds, "kgd_t_max": c.kgd_t_max,
                   "fps": {m.name: ctx.model_fingerprint(m.name) for m in c.models},
                   "data": {t: ctx.data_fp(t) for t in c.curve_tasks},
                   "cells": {f"{m.id}/{t}": [cell_fp(ctx, m, t), kgd_fp(ctx, m, t)] for m in c.models
                             for t in c.curve_tasks}})  # a changed fine-tuning default is a changed result


def cell_fp(ctx: Context, plan: ModelPlan, task: str) -> str:
    """Key of a fine-tuning cell beyond its name (size, seed, lr): weights, data and every other field of its
    FinetuneConfig, defaults included, so that a changed default is a new cell, never a stale one."""
    ft = finetune_config(ctx, plan, task, ctx.options(Options).sizes[0], 0, plan.lrs[0]).model_dump()
    shared = {k: v for k, v in ft.items() if k not in ("n_train", "seed", "lr")}
    return ctx.unit_fp(plan.name, task, finetune=shared)


def kgd_fp(ctx: Context, plan: ModelPlan, task: str) -> str:
    """Key of a kernel-GD unit beyond its name: weights, data and the kernel's model and parameters."""
    head = {} if plan.sigma == 1.0 else {"sigma": plan.sigma}  # (units from before sigma was a setting stay valid)
    return ctx.unit_fp(plan.name, task, layers=plan.layers, params=kernel_params(plan), **head)


def cell_name(plan: ModelPlan, task: str, size: int, seed: int, lr: float) -> str:
    """File of one fine-tuning cell inside the stage folder."""
    return f"cells/{slug(plan.id)}/{task}/lr{lr:g}-n{size}-s{seed}.json"


def kgd_name(plan: ModelPlan, task: str, seed: int) -> str:
    """File of one kernel-GD unit (kernels, f_PT and labels) inside the stage folder."""
    return f"kgd/{slug(plan.id)}/{task}-s{seed}.safetensors"


def kgd_kernels(ctx: Context, plan: ModelPlan, task: str, seed: int) -> dict[str, torch.Tensor]:
    """K(pool, pool), K(test, pool), f_PT on both, and the labels: the whole kernel-GD unit of one seed."""
    cfg = ctx.options(Options)
    pool = subsample(ctx.task_data(task, "train"), cfg.kgd_max_n, seed=seed)
    test_all = ctx.task_data(task)
    test = subsample(test_all, min(cfg.kgd_n_test, len(test_all)), seed=seed)
    loaded, f, params = ctx.entk_model(plan)
    xp = encode(loaded.tokenizer, loaded.kind, pool, max_length=cfg.max_length)
    xt = encode(loaded.tokenizer, loaded.kind, test, max_length=cfg.max_length)
    k_pool = kernel_matrix(f, xp, params=params, progress=False)
    k_test = kernel_matrix(f, xt, xp, params=params, progress=False)
    with torch.no_grad():
        f_pool = torch.cat([f(xp["input_ids"][i:i + 32], xp["attention_mask"][i:i + 32])
                            for i in range(0, len(pool), 32)])
        f_test = torch.cat([f(xt["input_ids"][i:i + 32], xt["attention_mask"][i:i + 32])
                            for i in range(0, len(test), 32)])
    return {"K_pool": k_pool.double(), "K_test_pool": k_test.double(), "f_pool": f_pool.double(),
            "f_test": f_test.double(), "y_pool": torch.as_tensor(np.asarray(pool.labels, dtype=np.float64)),
            "y_test": torch.as_tensor(np.asarray(test.labels, dtype=np.float64))}


CellJob = tuple[ModelPlan, str, int, int, float]  # (plan, task, size, seed, lr): one fine-tuning run
KgdJob = tuple[ModelPlan, str, int]  # (plan, task, seed): one kernel-GD unit
Job = CellJob | KgdJob


def _worker_init(threads: int) -> None:
    """A worker process's share of the threads (set before its first torch op)."""
    import torch

    torch.set_num_threads(threads)


def _in_worker(kind: str, cls: type[RunOptions], cfg: dict[str, Any], data_dir: str | None, plan: dict[str, Any],
               task: str, *args: Any) -> Cell | dict[str, torch.Tensor]:
    """One unit in a worker process, from plain data (the parent's models and caches stay there); `cls` is the
    config's class (ReproConfig, pickled by name)."""
    from pathlib import Path

    ctx = Context(cls.model_validate(cfg), Path("."), data_dir, progress=False)
    p = ModelPlan.model_validate(plan)
    if kind == "cell":
        return finetune_cell(ctx, p, task, *args)
    return kgd_kernels(ctx, p, task, *args)


class Units:
    """The stage's units: read back from the run folder, or computed, here (workers = 1, in the order asked) or in
    one pool of `workers` processes for the whole stage (work is queued ahead with `submit`, so a worker never
    waits for another's long run). This process writes each unit the moment it finishes."""

    def __init__(self, ctx: Context, rf: RunFolder, bar: tqdm[Any]) -> None:
        self.ctx, self.rf, self.bar = ctx, rf, bar
        self.workers = ctx.options(Options).workers
        self.pool: ProcessPoolExecutor | None = None
        self.pending: dict[Future[Any], tuple[str, str, str]] = {}  # future -> (kind, unit name, key)
        self.counted: set[str] = set()  # units the bar has counted: each once, when written or first read back

    @property
    def running(self) -> set[str]:
        """Names of the units queued or running in the pool."""
        return {name for _, name, _ in self.pending.values()}

    # ------------------------------------------------------------------ what a unit is

    def _spec(self, kind: str, job: Job) -> tuple[str, str]:
        plan, task = job[0], job[1]
        if kind == "cell":
            return cell_name(plan, task, *job[2:]), cell_fp(self.ctx, plan, task)
        return kgd_name(plan, task, job[2]), kgd_fp(self.ctx, plan, task)

    def _read(self, kind: str, name: str, fp: str) -> Any:
        if kind == "kgd":
            return load_tensors(self.rf.root / name, fp)
        got = read_unit(self.rf.root / name, fp)
        try:
            return None if got is None else Cell.from_dict(got, str(self.rf.root / name))
        except DataError as e:  # a unit of an older layout: computed again
            log.warning("%s; recomputing it", e)
            return None

    def _write(self, kind: str, name: str, fp: str, unit: Any) -> Any:
        if kind == "cell":
            unit = unit.model_copy(update={"data_fp": fp})
            self.rf.write_json(name, unit.to_dict())
        else:
            self.rf.save_tensors(name, unit, {"data": fp})
        return unit

    # ------------------------------------------------------------------ asking for units

    def submit(self, kind: str, jobs: Sequence[Job]) -> None:
        """Queue the missing units of `jobs` in the pool (largest training size first); nothing with one worker."""
        if self.workers == 1:
            return
        for job in sorted(jobs, key=lambda j: -j[2] if kind == "cell" else 0):
            name, fp = self._spec(kind, job)
            if name in self.running or self._read(kind, name, fp) is not None:
                continue
            if self.pool is None:
                import multiprocessing

                import torch

                threads = max(1, torch.get_num_threads() // self.workers)
                self.pool = ProcessPoolExecutor(self.workers, multiprocessing.get_context("spawn"),
                                                _worker_init, (threads,))
            f = self.pool.submit(_in_worker, kind, type(self.ctx.cfg), self.ctx.cfg.model_dump(), self.ctx.data_dir,
                                 job[0].model_dump(), job[1], *job[2:])
            self.pending[f] = (kind, name, fp)

    def get(self, kind: str, job: Job) -> Any:
        """One unit: read back, waited for (writing every unit that finishes meanwhile), or computed here."""
        name, fp = self._spec(kind, job)
        unit = None if name in self.running else self._read(kind, name, fp)
        if unit is None and self.workers > 1:
            self.submit(kind, [job])
            while name in self.running:
                self._collect()
            unit = self._read(kind, name, fp)
        if unit is None:
            plan, task, *rest = job
            what = "n={} seed={} lr={:g}".format(*rest) if kind == "cell" else f"kernel-GD seed={rest[0]}"
            self.bar.set_postfix_str(f"{plan.id} {task} {what}")
            made = finetune_cell(self.ctx, plan, task, *rest) if kind == "cell" else \
                kgd_kernels(self.ctx, plan, task, *rest)
            unit = self._write(kind, name, fp, made)
        self.tick(name)
        return unit

    def tick(self, name: str) -> None:
        """Count unit `name` on the stage bar unless it already was (a unit written by a worker counts then)."""
        if name not in self.counted:
            self.counted.add(name)
            self.bar.update(1)

    def _collect(self) -> None:
        """Wait for the next unit(s) to finish in the pool and write them."""
        done, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
        for f in done:
            kind, name, fp = self.pending.pop(f)
            self._write(kind, name, fp, f.result())
            self.tick(name)
        self.bar.set_postfix_str(f"{len(self.pending)} queued or running on {self.workers} workers")

    def close(self) -> None:
        """End the pool: queued units are dropped, running ones finish unwritten (a rerun resumes them)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool, self.pending = None, {}


def run(ctx: Context, view: RunView) -> CurvesResult:
    """Tune the learning rate, fill every cell, compute the kernel-GD units, then aggregate."""
    cfg = ctx.options(Options)
    key = ctx.stage_key("curves", _fields(ctx))
    rf = ctx.open_stage("curves", key)
    inputs = _inputs(ctx)
    if rf.complete and (rf.root / "curves.json").is_file():
        try:
            got: CurvesResult | None = CurvesResult.read(rf.root / "curves.json")
        except DataError:  # written by an older layout: aggregated again from the cached units
            got = None
        if got is not None and got.inputs == inputs:
            return got
    n_tune = sum(len(m.lrs) for m in cfg.models) * len(cfg.curve_tasks)
    n_cells = sum(len(cfg.plan_sizes(m)) * cfg.plan_seeds(m) for m in cfg.models) * len(cfg.curve_tasks)
    n_kgd = len(cfg.models) * len(cfg.curve_tasks) * cfg.kgd_seeds if cfg.kgd and cfg.kgd_sizes else 0
    shared = sum(_shared(cfg, m) for m in cfg.models) * len(cfg.curve_tasks)  # a grid cell that is a curve cell too
    bar = tqdm(total=n_tune + n_cells + n_kgd - shared, desc="stage 2: learning curves", disable=not ctx.progress,
               unit="run")
    units = Units(ctx, rf, bar)
    try:
        lr_choice, cells, kgd_points = _fill(ctx, units, n_kgd > 0)
    finally:
        units.close()
        bar.close()
    res = aggregate(ctx, lr_choice, cells, kgd_points)
    res.inputs = inputs
    rf.write_json("curves.json", res.to_dict())
    rf.write_text("curves.csv", curves_csv(res))
    rf.finish(stage="curves")
    return res


def _shared(cfg: Options, plan: ModelPlan) -> int:
    """1 if the chosen rate's tuning cell (tuning size, seed 0) is also one of the plan's curve cells, else 0."""
    return int(cfg.tuning_size in cfg.plan_sizes(plan) and cfg.plan_seeds(plan) >= 1)


def _fill(ctx: Context, units: Units,
          with_kgd: bool) -> tuple[dict[str, dict[str, LrChoice]], list[Cell], list[KgdPoint]]:
    """Every learning-rate grid first (and, with workers, the kernel-GD units behind them), then per model and
    task the choice of rate, the curve's cells at that rate and the kernel-GD points."""
    cfg = ctx.options(Options)
    pairs = [(plan, task) for plan in cfg.models for task in cfg.curve_tasks]
    grids: dict[tuple[str, str], list[CellJob]] = {(p.id, t): [(p, t, cfg.tuning_size, 0, lr) for lr in p.lrs]
                                                   for p, t in pairs}
    kgds: dict[tuple[str, str], list[KgdJob]] = {
        (p.id, t): [(p, t, seed) for seed in range(cfg.kgd_seeds)] if with_kgd else [] for p, t in pairs}
    for p, t in pairs:
        units.submit("cell", grids[p.id, t])
    for p, t in pairs:
        units.submit("kgd", kgds[p.id, t])
    lr_choice: dict[str, dict[str, LrChoice]] = {plan.id: {} for plan in cfg.models}
    curve_jobs: dict[tuple[str, str], list[CellJob]] = {}
    tuned: list[Cell] = []
    for plan, task in pairs:
        grid: list[Cell] = [units.get("cell", job) for job in grids[plan.id, task]]
        ok = [g for g in grid if g.ok and g.best_val is not None and math.isfinite(g.best_val)]
        best = min(ok, key=lambda g: _tuning_key({"best_val": g.best_val, "history": g.history})) if ok else None
        lr = best.lr if best else None
        lr_choice[plan.id][task] = LrChoice(
            lr=lr, size=cfg.tuning_size, criterion="validation loss (best over the run), seed 0; a tie "
            "(each run kept its step 0, the same starting model) broken by the best validation loss after step 0",
            grid=[GridPoint(lr=g.lr, best_val=g.best_val, skill=g.skill, failed=g.failed) for g in grid])
        tuned += [g.model_copy(update={"tuning": True}) for g in grid if g.lr != lr]
        if lr is None:
            log.warning("%s %s: every learning rate failed; no curve", plan.id, task)
        curve_jobs[plan.id, task] = [] if lr is None else \
            [(plan, task, size, seed, lr) for size in cfg.plan_sizes(plan) for seed in range(cfg.plan_seeds(plan))]
        units.submit("cell", curve_jobs[plan.id, task])
    cells: list[Cell] = []
    kgd_points: list[KgdPoint] = []
    for plan, task in pairs:
        cells += [c for c in tuned if c.model == plan.id and c.task == task]
        cells += [units.get("cell", job).model_copy(update={"tuning": False}) for job in curve_jobs[plan.id, task]]
        if lr_choice[plan.id][task].lr is None:
            for job in kgds[plan.id, task]:  # no curve, so no kernel-GD points beside it
                units.tick(kgd_name(*job))
            units.bar.total -= len(cfg.plan_sizes(plan)) * cfg.plan_seeds(plan) - _shared(cfg, plan)
            continue
        for job in kgds[plan.id, task]:
            pts = kgd_curve(units.get("kgd", job), cfg.kgd_sizes, cfg.val, get_spec(task).type, job[2],
                            cfg.kgd_t_max, plan.center_output)
            kgd_points += [p.model_copy(update={"model": plan.id, "task": task}) for p in pts]
    return lr_choice, cells, kgd_points


# ---------------------------------------------------------------- aggregation


def loglog_slope(sizes: list[int], errors: list[float], level: float = 0.9) -> dict[str, float] | None:
    """OLS slope of log(error) on log(size) over every point, with a t interval (None if < 3 points)."""
    from scipy import stats

    pts = [(s, e) for s, e in zip(sizes, errors, strict=True) if e is not None and math.isfinite(e) and e > 0]
    if len(pts) < 3 or len({s for s, _ in pts}) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    fit = stats.linregress(x, y)
    q = stats.t.ppf((1 + level) / 2, len(pts) - 2)
    return {"slope": float(fit.slope), "low": float(fit.slope - q * fit.stderr), "high": float(fit.slope + q * fit.stderr),
            "level": level, "points": len(pts), "r2": float(fit.rvalue ** 2)}


def aggregate(ctx: Context, lr_choice: dict[str, dict[str, LrChoice]], cells: list[Cell],
              kgd_points: list[KgdPoint]) -> CurvesResult:
    """Mean and sd over seeds per size, scale-free measures, slopes, and the kernel-GD curve per (model, task)."""
    cfg = ctx.options(Options)
    curves = []
    for plan in cfg.models:
        for task in cfg.curve_tasks:
            ttype = get_spec(task).type
            mine = [c for c in cells if c.model == plan.id and c.task == task and not c.tuning and c.ok]
            names = ["mse", "nmse", "pearson", "spearman", "skill"] if ttype == "regression" else \
                ["accuracy", "f1", "skill"]
            mean: dict[str, list[float]] = {k: [] for k in names}
            sd: dict[str, list[float]] = {k: [] for k in names}
            sizes: list[int] = []
            errs_x: list[int] = []
            errs_y: list[float] = []
            for size in cfg.plan_sizes(plan):
                at = [c for c in mine if c.size == size]
                if not at:
                    continue
                sizes.append(size)
                for k in names:
                    vals = [_metric(c, k) for c in at]
                    mean[k].append(float(np.nanmean(vals)) if not all(math.isnan(v) for v in vals) else float("nan"))
                    sd[k].append(float(np.nanstd(vals)) if len(vals) > 1 else 0.0)
                for c in at:
                    errs_x.append(size)
                    # the error whose slope is fitted: MSE/Var(y_test) or 1 - accuracy
                    errs_y.append(_metric(c, "nmse") if ttype == "regression" else 1.0 - _metric(c, "accuracy"))
            pts = [p for p in kgd_points if p.model == plan.id and p.task == task]
            ksizes = sorted({p.size for p in pts})
            kg: dict[str, list[float]] = {}
            knames = ["mse", "nmse", "pearson", "spearman", "mse_target"] if ttype == "regression" else \
                ["accuracy", "f1", "mse_target"]
            for k in knames + ["t_holdout", "t_oracle"]:
                kg[k] = []
                for s in ksizes:
                    vals = [_kgd_metric(p, k) for p in pts if p.size == s]
                    kg[k].append(float(np.mean(vals)))
            kx = [p.size for p in pts]
            choice = lr_choice.get(plan.id, {}).get(task)
            s_ft, s_kgd = loglog_slope(errs_x, errs_y), loglog_slope(kx, [
                _kgd_metric(p, "nmse") if ttype == "regression" else 1.0 - p.test_holdout["accuracy"] for p in pts])
            s_tgt = loglog_slope(kx, [p.test_holdout["mse_target"] for p in pts])
            curves.append(TaskCurve(
                model=plan.id, task=task, type=ttype, setting=plan.setting, lr=choice.lr if choice else None,
                sizes=sizes, metrics=mean, sd=sd, kgd_sizes=ksizes, kgd=kg,
                slope=Slope(**s_ft) if s_ft else None, kgd_slope=Slope(**s_kgd) if s_kgd else None,
                kgd_slope_target=Slope(**s_tgt) if s_tgt else None,
                worse_than_baseline=sum(1 for c in mine if (c.skill if c.skill is not None else 0.0) < 0)))
    return CurvesResult(lr_choice=lr_choice, curves=curves, cells=cells, kgd_points=kgd_points)


def _num(v: Value) -> float:
    return float(v) if v is not None else float("nan")


def _metric(cell: Cell, k: str) -> float:
    if k == "skill":
        return _num(cell.skill)
    if k == "nmse":
        v = _num(cell.baseline.var_test)
        return _num(cell.test_best.get("mse")) / v if v > 0 else float("nan")
    return _num(cell.test_best.get(k))


def _kgd_metric(p: KgdPoint, k: str) -> float:
    if k == "t_holdout":
        return float(p.t_holdout)
    if k == "t_oracle":
        return float(p.t_oracle)
    if k == "nmse":
        return p.test_holdout["mse"] / p.var_test if p.var_test > 0 else float("nan")
    x = p.test_holdout.get(k)
    return float(x) if x is not None else float("nan")


def curves_csv(res: CurvesResult) -> str:
    """One row per fine-tuning cell: where it stopped, its test metrics and its scale-free score."""
    cols = ["model", "task", "setting", "size", "seed", "lr", "tuning", "n_train", "best_step", "stopped_step",
            "oracle_step", "skill", "mse", "pearson", "spearman", "accuracy", "f1", "failed"]
    lines = [",".join(cols)]
    for cell in res.cells:
        c = cell.to_dict()
        row = []
        for k in cols:
            v = c.get(k, c.get("test_best", {}).get(k, ""))
            row.append(f"{v:.6g}" if isinstance(v, float) else ("" if v is None else str(v).replace(",", ";")))
        lines.append(",".join(row))
    return "\n".join(lines) + "\n"


def section(view: RunView, figs: dict[str, bytes]) -> Section:
    """The report's learning-curve section: rates chosen, scale-free scores and slopes, raw metrics, kernel GD."""
    sec = Section("Learning curves (paper Figures 2 and 10) with the kernel-GD curve and the predicted rate")
    d = view.of(CurvesResult)
    if d is None:
        sec.text.append("This stage has not run.")
        return sec
    cfg, models = view.cfg, view.plans()
    sec.text.append(
        f"Training sizes {cfg.get('sizes')} (before a {cfg.get('val')} hold-out split), {cfg.get('seeds')} seed(s), "
        f"{cfg.get('n_test')} test examples; hold-out early stopping on the validation loss with the best weights "
        "restored. The learning rate is chosen per model and task from the grid on the validation loss at training "
        f"size {cfg.get('tune_size') or 'the middle size'}, seed 0 (table 'learning rate'). Scale-free score: "
        "R^2 = 1 - MSE/Var(y_test) for regression, (accuracy - majority)/(1 - majority) for classification; "
        "0 = a model that ignores its input. Kernel GD: closed-form gradient descent from f_PT on the eNTK of the "
        "same model (train and test kernels, step 1/lambda_1, t chosen on the hold-out rows), i.e. the linearised "
        "model's exact learning curve; classification is kernel regression on -1/+1 labels. Regression targets are "
        "standardised on each cell's training rows, for fine-tuning (FinetuneConfig.standardize) and kernel GD alike; "
        "metrics are in the targets' units. Step 0 is evaluated and may be kept by early stopping.")
    centred = [k for k, m in models.items() if m.get("center_output", False)]
    plain = [k for k in models if k not in centred]
    if centred:
        sec.text.append(
            f"Start ({', '.join(centred)}): fine-tuning trains f = g - g_0 + c, the model's output minus its output at "
            "step 0 (a constant of each input, so gradients and eNTK are unchanged) plus the constant predictor c "
            "(the training mean; the log class prior), and kernel GD starts at the training targets' mean: both begin "
            "exactly at the input-ignoring baseline, not at the new random head's per-row output.")
    if plain:
        sec.text.append(
            f"Start ({', '.join(plain)}): the new head's bias is set so that f's mean over the cell's training rows is "
            "the training mean (log class prior); kernel GD starts from f_PT with the head's bias at 0.")
    betas: dict[str, dict[str, float]] = {}
    spectra = view.of(SpectraResult)
    for s in spectra.spectra if spectra else []:
        betas.setdefault(s.model, {})[s.task] = s.beta_paper_mean
    for model in dict.fromkeys(c.model for c in d.curves):
        plan = models.get(model, {})
        setting = plan.get("setting", "?") + (f", backbone cut after block {plan['layers']}" if plan.get("layers")
                                              else "") + (f", head init sigma {plan['sigma']:g}"
                                                          if plan.get("sigma", 1.0) != 1.0 else "")
        mine = [c for c in d.curves if c.model == model]
        sizes = sorted({s for c in mine for s in c.sizes})
        lr = Table(f"lr-{slug(model)}", f"learning rate chosen on validation, {model} ({setting})",
                   f"curves/curves.json: lr_choice[{model}]", ["task", "grid (lr: best val loss)", "chosen lr"])
        for task, ch in d.lr_choice.get(model, {}).items():
            grid = "; ".join(f"{g.lr:g}: " + ("failed" if g.failed else fmt(g.best_val)) for g in ch.grid)
            lr.rows.append([label(task), grid, f"{ch.lr:g}" if ch.lr is not None else "-"])
        sec.tables.append(lr)
        sk = Table(f"score-{slug(model)}", f"scale-free test score by training size, {model} (mean over seeds)",
                   f"curves/curves.json: curves[model={model}].metrics.skill, .slope, .kgd_slope",
                   ["task"] + [f"n={s}" for s in sizes] + ["slope", "slope low", "slope high", "predicted slope",
                                                           "kernel-GD slope", "cells below baseline"],
                   note="slope: OLS of log(error) on log(n) over every cell with a 90% t interval; error = "
                        "MSE/Var(y_test) (regression) or 1 - accuracy (classification); predicted slope = "
                        "-2beta/(2beta+1) with beta from stage 1 (eq 30).")
        for c in mine:
            vals = [c.metrics["skill"][c.sizes.index(s)] if s in c.sizes else None for s in sizes]
            b = betas.get(model, {}).get(c.task)
            pred = -2 * b / (2 * b + 1) if b and b > 0 else None
            sl, ks = c.slope, c.kgd_slope
            sk.rows.append([label(c.task)] + vals + [sl.slope if sl else None, sl.low if sl else None,
                                                     sl.high if sl else None, pred, ks.slope if ks else None,
                                                     c.worse_than_baseline])
        sec.tables.append(sk)
        raw = Table(f"raw-{slug(model)}", f"raw test metrics by training size, {model} (mean over seeds)",
                    f"curves/curves.json: curves[model={model}].metrics",
                    ["task", "metric"] + [f"n={s}" for s in sizes])
        for c in mine:
            for m in (["mse", "pearson", "spearman"] if c.type == "regression" else ["accuracy", "f1"]):
                raw.rows.append([label(c.task), m] + [c.metrics[m][c.sizes.index(s)] if s in c.sizes else None
                                                      for s in sizes])
        sec.tables.append(raw)
        kg = [c for c in mine if c.kgd_sizes]
        if kg:
            ksz = sorted({s for c in kg for s in c.kgd_sizes})
            kt = Table(f"kgd-{slug(model)}", f"kernel GD on the eNTK, {model}: test metric at the hold-out step",
                       f"curves/curves.json: curves[model={model}].kgd", ["task", "metric"] + [f"n={s}" for s in ksz])
            for c in kg:
                for m in (["nmse", "pearson"] if c.type == "regression" else ["accuracy", "f1"]):
                    kt.rows.append([label(c.task), m] + [c.kgd[m][c.kgd_sizes.index(s)] if s in c.kgd_sizes else None
                                                         for s in ksz])
            sec.tables.append(kt)
        for kind in ("regression", "classification"):
            sub = [c for c in mine if c.type == kind]
            if not sub:
                continue
            name = f"curves_{slug(model)}_{kind}.png"
            figs[name] = plots.curves_figure(sub, betas.get(model, {}), kind, f"{model} ({setting}): {kind} tasks")
            sec.figures.append((name, f"{model}, {kind}: " + (
                "raw MSE (paper Figure 2 left) and MSE/Var(y_test) on log-log axes with kernel GD (dashed) and the "
                "rate N^(-2beta/(2beta+1)) fitted through the measured points (dotted)" if kind == "regression" else
                "accuracy (paper Figure 2 right) with kernel GD (dashed), and F1 (paper Figure 10)") + "."))
    return sec
