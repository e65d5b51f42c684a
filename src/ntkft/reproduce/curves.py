"""Stage 2: learning curves (paper Figure 2 and 10) with the learning rate chosen on validation data, the
kernel-GD curve on the eNTK beside each, scale-free measures, and log-log slopes against eq (30)'s rate.

Units, each cached as one file: a fine-tuning cell (model, task, size, seed, lr) and a kernel-GD kernel
(model, task, seed). The learning rate of each (model, task) is the grid value with the best validation
loss at the tuning size and seed 0; that run is reused as the curve's cell."""

from __future__ import annotations

import logging
import math
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .._runs import RunFolder
from ..errors import NtkftError
from ..tasks import get_spec
from .config import ModelPlan, ReproConfig
from .context import Context, load_tensors, read_json, read_unit, slug
from .kgd import curve as kgd_curve
from .kgd import kgd_kernels

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- one fine-tuning cell


def finetune_config(ctx: Context, plan: ModelPlan, task: str, size: int, seed: int, lr: float):
    """The FinetuneConfig of one cell (hold-out early stopping on the validation loss, no checkpoint)."""
    from ..config import make
    from ..finetune import FinetuneConfig

    return make(FinetuneConfig, model=plan.name, task=task, setting=plan.setting, layers=plan.layers, n_train=size,
                val=ctx.cfg.val, n_test=ctx.cfg.n_test, max_length=ctx.cfg.max_length, seed=seed, optimizer="adamw",
                lr=lr, batch_size=plan.batch_size, max_steps=plan.max_steps, eval_every=plan.eval_every,
                patience=plan.patience, sigma=plan.sigma, center_output=plan.center_output, save_model=False)


def _fit(ft_cfg, data_dir: str | None, track_test: bool):
    """Fine-tune one config; with `track_test`, the test split is also scored at every evaluation (for the
    oracle stopping step). Falls back to plain `finetune` if the trainer does not offer the hooks."""
    from ..finetune import Trainer, finetune

    if not track_test or not all(hasattr(Trainer, a) for a in ("_log", "evaluate", "test")):
        return finetune(ft_cfg, None, data_dir=data_dir, progress=False)

    class OracleTrainer(Trainer):
        def _log(self, rec: dict) -> None:
            rec = {**rec, **{f"test_{k}": v for k, v in self.evaluate(self.test).items()}}
            super()._log(rec)

    return OracleTrainer(ft_cfg, None, data_dir, False).fit()


def _tuning_key(cell: dict) -> tuple[float, float]:
    """Order of learning-rate runs: best validation loss, then the best after step 0. Runs that all keep step 0
    (with a centred start, the same constant predictor) tie exactly on the first; the second says which learning
    rate got closer to beating it, instead of the grid's order deciding."""
    after = [r["val_loss"] for r in cell.get("history", []) if r.get("step", 0) > 0
             and isinstance(r.get("val_loss"), (int, float)) and math.isfinite(r["val_loss"])]
    return cell["best_val"], min(after, default=math.inf)


def baseline(task_type: str, y_train: np.ndarray, y_test: np.ndarray) -> dict:
    """What a model that ignores the input scores: the training mean (regression) or majority class."""
    y_train, y_test = np.asarray(y_train, dtype=np.float64), np.asarray(y_test, dtype=np.float64)
    if task_type == "regression":
        return {"var_test": float(np.var(y_test)), "mse_mean": float(np.mean((y_test - y_train.mean()) ** 2))}
    major = int(np.bincount(y_train.astype(np.int64)).argmax())
    acc = float(np.mean(y_test == major))
    f1 = 0.0 if major == 0 else float(2 * acc / (1 + acc))  # binary F1 of always predicting class 1
    return {"accuracy_majority": acc, "f1_majority": f1, "majority": major}


def skill(task_type: str, test: dict, base: dict) -> float:
    """Scale-free score: R^2 = 1 - MSE/Var(y_test) (regression); (acc - majority)/(1 - majority) (classification)."""
    if task_type == "regression":
        return 1.0 - test["mse"] / base["var_test"] if base["var_test"] > 0 else float("nan")
    m = base["accuracy_majority"]
    return (test["accuracy"] - m) / (1 - m) if m < 1 else float("nan")


def oracle(history: list[dict], task_type: str) -> tuple[int | None, float | None]:
    """(step, value) of the best test score seen during training: min MSE or max accuracy."""
    key = "test_mse" if task_type == "regression" else "test_accuracy"
    pts = [(r["step"], r[key]) for r in history if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if not pts:
        return None, None
    best = min(pts, key=lambda p: p[1]) if task_type == "regression" else max(pts, key=lambda p: p[1])
    return int(best[0]), float(best[1])


def finetune_cell(ctx: Context, plan: ModelPlan, task: str, size: int, seed: int, lr: float) -> dict:
    """Fine-tune one cell and summarise it: stops, validation/test metrics, the baseline and the scale-free score."""
    from ..finetune.data import load_splits

    spec = get_spec(task)
    ft_cfg = finetune_config(ctx, plan, task, size, seed, lr)
    _, train, val, test = load_splits(ft_cfg, ctx.data_dir)
    base = baseline(spec.type, train.labels, test.labels)
    cell = {"model": plan.id, "task": spec.name, "type": spec.type, "setting": plan.setting, "layers": plan.layers,
            "size": size, "seed": seed, "lr": lr, "n_train": len(train), "n_val": len(val), "n_test": len(test),
            "batch_size": plan.batch_size, "baseline": base}
    try:
        res = _fit(ft_cfg, ctx.data_dir, ctx.cfg.track_test)
    except NtkftError as e:  # e.g. a non-finite loss at a too-large learning rate: a failed grid point
        return {**cell, "failed": str(e)}
    hist = [{k: v for k, v in r.items() if k == "step" or k.startswith(("val_", "test_"))} for r in res.history]
    o_step, o_val = oracle(res.history, spec.type)
    steps_per_epoch = max(1, math.ceil(len(train) / plan.batch_size))
    return {**cell, "best_step": res.best_step, "stopped_step": res.stopped_step, "stop_reason": res.stop_reason,
            "best_val": res.best_val, "monitor": res.monitor, "val_best": res.val_best, "test_best": res.test_best,
            "test_last": res.test_last, "seconds": res.seconds, "steps_per_epoch": steps_per_epoch,
            "oracle_step": o_step, "oracle_value": o_val, "warnings": list(getattr(res, "warnings", [])),
            "skill": skill(spec.type, res.test_best, base), "history": hist}


# ---------------------------------------------------------------- the stage


@dataclass
class TaskCurve:
    """One (model, task) learning curve: per size the mean and sd over seeds, and the kernel-GD curve."""

    model: str
    task: str
    type: str
    setting: str
    lr: float | None
    sizes: list[int]
    metrics: dict[str, list[float]]  # metric -> mean over seeds per size (mse, nmse, pearson, ..., skill)
    sd: dict[str, list[float]]
    kgd_sizes: list[int] = field(default_factory=list)
    kgd: dict[str, list[float]] = field(default_factory=dict)  # metric -> mean over kgd seeds per size
    slope: dict | None = None  # measured log-log slope of the error with an interval
    kgd_slope: dict | None = None
    kgd_slope_target: dict | None = None  # slope of the kernel-GD MSE on the regression targets
    worse_than_baseline: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CurvesResult:
    """Stage 2's result: the learning-rate choice, every cell, the curves and the kernel-GD points."""

    lr_choice: dict[str, dict[str, dict]]
    curves: list[TaskCurve]
    cells: list[dict]
    kgd_points: list[dict]

    def to_dict(self) -> dict:
        return {"lr_choice": self.lr_choice, "curves": [c.to_dict() for c in self.curves], "cells": self.cells,
                "kgd_points": self.kgd_points}

    @classmethod
    def from_dict(cls, d: dict) -> CurvesResult:
        """Read back `to_dict()`'s output."""
        return cls(d["lr_choice"], [TaskCurve(**c) for c in d["curves"]], d["cells"], d["kgd_points"])

    def get(self, model: str, task: str) -> TaskCurve | None:
        return next((c for c in self.curves if c.model == model and c.task == task), None)


def _fields(ctx: Context) -> dict:
    """The config fields every unit of the stage shares (the stage folder's key)."""
    c = ctx.cfg
    return {"val": c.val, "n_test": c.n_test, "track_test": c.track_test, "kgd_max_n": c.kgd_max_n,
            "kgd_n_test": c.kgd_n_test}


def _inputs(ctx: Context) -> str:
    """Digest of everything the stage's aggregated result depends on (the lists included)."""
    from .._runs import digest

    c = ctx.cfg
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
    ft = finetune_config(ctx, plan, task, ctx.cfg.sizes[0], 0, plan.lrs[0]).model_dump()
    shared = {k: v for k, v in ft.items() if k not in ("n_train", "seed", "lr")}
    return ctx.unit_fp(plan.name, task, finetune=shared)


def kgd_fp(ctx: Context, plan: ModelPlan, task: str) -> str:
    """Key of a kernel-GD unit beyond its name: weights, data and the kernel's model and parameters."""
    from .kgd import kernel_params

    head = {} if plan.sigma == 1.0 else {"sigma": plan.sigma}  # (units from before sigma was a setting stay valid)
    return ctx.unit_fp(plan.name, task, layers=plan.layers, params=kernel_params(plan), **head)


def cell_name(plan: ModelPlan, task: str, size: int, seed: int, lr: float) -> str:
    """File of one fine-tuning cell inside the stage folder."""
    return f"cells/{slug(plan.id)}/{task}/lr{lr:g}-n{size}-s{seed}.json"


def kgd_name(plan: ModelPlan, task: str, seed: int) -> str:
    """File of one kernel-GD unit (kernels, f_PT and labels) inside the stage folder."""
    return f"kgd/{slug(plan.id)}/{task}-s{seed}.safetensors"


Cell = tuple[ModelPlan, str, int, int, float]  # (plan, task, size, seed, lr): one fine-tuning run
Kgd = tuple[ModelPlan, str, int]  # (plan, task, seed): one kernel-GD unit


def _worker_init(threads: int) -> None:
    """A worker process's share of the threads (set before its first torch op)."""
    import torch

    torch.set_num_threads(threads)


def _in_worker(kind: str, cfg: dict, data_dir: str | None, plan: dict, task: str, *args: Any) -> Any:
    """One unit in a worker process, from plain data (the parent's models and caches stay there)."""
    from pathlib import Path

    ctx = Context(ReproConfig.model_validate(cfg), Path("."), data_dir, progress=False)
    fn = finetune_cell if kind == "cell" else kgd_kernels
    return fn(ctx, ModelPlan.model_validate(plan), task, *args)


class Units:
    """The stage's units: read back from the run folder, or computed, here (workers = 1, in the order asked) or in
    one pool of `workers` processes for the whole stage (work is queued ahead with `submit`, so a worker never
    waits for another's long run). This process writes each unit the moment it finishes."""

    def __init__(self, ctx: Context, rf: RunFolder, bar: tqdm) -> None:
        self.ctx, self.rf, self.bar = ctx, rf, bar
        self.pool: ProcessPoolExecutor | None = None
        self.pending: dict[Future, tuple[str, str, str]] = {}  # future -> (kind, unit name, key)
        self.counted: set[str] = set()  # units the bar has counted: each once, when written or first read back

    @property
    def running(self) -> set[str]:
        """Names of the units queued or running in the pool."""
        return {name for _, name, _ in self.pending.values()}

    # ------------------------------------------------------------------ what a unit is

    def _spec(self, kind: str, job: Cell | Kgd) -> tuple[str, str]:
        plan, task = job[0], job[1]
        if kind == "cell":
            return cell_name(*job), cell_fp(self.ctx, plan, task)  # type: ignore[arg-type]
        return kgd_name(*job), kgd_fp(self.ctx, plan, task)  # type: ignore[arg-type]

    def _read(self, kind: str, name: str, fp: str) -> Any:
        return read_unit(self.rf.root / name, fp) if kind == "cell" else load_tensors(self.rf.root / name, fp)

    def _write(self, kind: str, name: str, fp: str, unit: Any) -> Any:
        if kind == "cell":
            unit = unit | {"data_fp": fp}
            self.rf.write_json(name, unit)
        else:
            self.rf.save_tensors(name, unit, {"data": fp})
        return unit

    # ------------------------------------------------------------------ asking for units

    def submit(self, kind: str, jobs: list) -> None:
        """Queue the missing units of `jobs` in the pool (largest training size first); nothing with one worker."""
        if self.ctx.cfg.workers == 1:
            return
        for job in sorted(jobs, key=lambda j: -j[2] if kind == "cell" else 0):
            name, fp = self._spec(kind, job)
            if name in self.running or self._read(kind, name, fp) is not None:
                continue
            if self.pool is None:
                import multiprocessing

                import torch

                threads = max(1, torch.get_num_threads() // self.ctx.cfg.workers)
                self.pool = ProcessPoolExecutor(self.ctx.cfg.workers, multiprocessing.get_context("spawn"),
                                                _worker_init, (threads,))
            f = self.pool.submit(_in_worker, kind, self.ctx.cfg.model_dump(), self.ctx.data_dir,
                                 job[0].model_dump(), *job[1:])
            self.pending[f] = (kind, name, fp)

    def get(self, kind: str, job: Cell | Kgd) -> Any:
        """One unit: read back, waited for (writing every unit that finishes meanwhile), or computed here."""
        name, fp = self._spec(kind, job)
        unit = None if name in self.running else self._read(kind, name, fp)
        if unit is None and self.ctx.cfg.workers > 1:
            self.submit(kind, [job])
            while name in self.running:
                self._collect()
            unit = self._read(kind, name, fp)
        if unit is None:
            plan, task, *rest = job
            what = "n={} seed={} lr={:g}".format(*rest) if kind == "cell" else f"kernel-GD seed={rest[0]}"
            self.bar.set_postfix_str(f"{plan.id} {task} {what}")
            fn = finetune_cell if kind == "cell" else kgd_kernels
            unit = self._write(kind, name, fp, fn(self.ctx, *job))  # type: ignore[operator]
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
        self.bar.set_postfix_str(f"{len(self.pending)} queued or running on {self.ctx.cfg.workers} workers")

    def close(self) -> None:
        """End the pool: queued units are dropped, running ones finish unwritten (a rerun resumes them)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool, self.pending = None, {}


def run(ctx: Context) -> CurvesResult:
    """Tune the learning rate, fill every cell, compute the kernel-GD units, then aggregate."""
    cfg = ctx.cfg
    key = ctx.stage_key("curves", _fields(ctx))
    rf = ctx.open_stage("curves", key)
    inputs = _inputs(ctx)
    got = read_json(rf.root / "curves.json")
    if rf.complete and got is not None and got.get("inputs") == inputs:
        return CurvesResult.from_dict(got)
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
    rf.write_json("curves.json", res.to_dict() | {"inputs": inputs})
    rf.write_text("curves.csv", curves_csv(res))
    rf.finish(stage="curves")
    return res


def _shared(cfg: ReproConfig, plan: ModelPlan) -> int:
    """1 if the chosen rate's tuning cell (tuning size, seed 0) is also one of the plan's curve cells, else 0."""
    return int(cfg.tuning_size in cfg.plan_sizes(plan) and cfg.plan_seeds(plan) >= 1)


def _fill(ctx: Context, units: Units, with_kgd: bool) -> tuple[dict, list[dict], list[dict]]:
    """Every learning-rate grid first (and, with workers, the kernel-GD units behind them), then per model and
    task the choice of rate, the curve's cells at that rate and the kernel-GD points."""
    cfg = ctx.cfg
    pairs = [(plan, task) for plan in cfg.models for task in cfg.curve_tasks]
    grids = {(p.id, t): [(p, t, cfg.tuning_size, 0, lr) for lr in p.lrs] for p, t in pairs}
    kgds = {(p.id, t): [(p, t, seed) for seed in range(cfg.kgd_seeds)] if with_kgd else [] for p, t in pairs}
    for p, t in pairs:
        units.submit("cell", grids[p.id, t])
    for p, t in pairs:
        units.submit("kgd", kgds[p.id, t])
    lr_choice: dict[str, dict] = {plan.id: {} for plan in cfg.models}
    curve_jobs: dict[tuple[str, str], list[Cell]] = {}
    tuned: list[dict] = []
    for plan, task in pairs:
        grid = [units.get("cell", job) for job in grids[plan.id, task]]
        ok = [g for g in grid if "failed" not in g and g.get("best_val") is not None and math.isfinite(g["best_val"])]
        best = min(ok, key=_tuning_key) if ok else None
        lr = best["lr"] if best else None
        lr_choice[plan.id][task] = {
            "lr": lr, "size": cfg.tuning_size, "criterion": "validation loss (best over the run), seed 0; a tie "
            "(each run kept its step 0, the same starting model) broken by the best validation loss after step 0",
            "grid": [{"lr": g["lr"], "best_val": g.get("best_val"), "skill": g.get("skill"),
                      "failed": g.get("failed")} for g in grid]}
        tuned += [g | {"tuning": True} for g in grid if g["lr"] != lr]
        if lr is None:
            log.warning("%s %s: every learning rate failed; no curve", plan.id, task)
        curve_jobs[plan.id, task] = [] if lr is None else \
            [(plan, task, size, seed, lr) for size in cfg.plan_sizes(plan) for seed in range(cfg.plan_seeds(plan))]
        units.submit("cell", curve_jobs[plan.id, task])
    cells: list[dict] = []
    kgd_points: list[dict] = []
    for plan, task in pairs:
        cells += [c for c in tuned if c["model"] == plan.id and c["task"] == task]
        cells += [units.get("cell", job) | {"tuning": False} for job in curve_jobs[plan.id, task]]
        if lr_choice[plan.id][task]["lr"] is None:
            for job in kgds[plan.id, task]:  # no curve, so no kernel-GD points beside it
                units.tick(kgd_name(*job))
            units.bar.total -= len(cfg.plan_sizes(plan)) * cfg.plan_seeds(plan) - _shared(cfg, plan)
            continue
        for job in kgds[plan.id, task]:
            pts = kgd_curve(units.get("kgd", job), cfg.kgd_sizes, cfg.val, get_spec(task).type, job[2],
                            cfg.kgd_t_max, plan.center_output)
            kgd_points += [p.to_dict() | {"model": plan.id, "task": task} for p in pts]
    return lr_choice, cells, kgd_points


# ---------------------------------------------------------------- aggregation


def loglog_slope(sizes: list[int], errors: list[float], level: float = 0.9) -> dict | None:
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


def aggregate(ctx: Context, lr_choice: dict, cells: list[dict], kgd_points: list[dict]) -> CurvesResult:
    """Mean and sd over seeds per size, scale-free measures, slopes, and the kernel-GD curve per (model, task)."""
    cfg = ctx.cfg
    curves = []
    for plan in cfg.models:
        for task in cfg.curve_tasks:
            ttype = get_spec(task).type
            mine = [c for c in cells if c["model"] == plan.id and c["task"] == task and not c.get("tuning")
                    and "failed" not in c]
            names = ["mse", "nmse", "pearson", "spearman", "skill"] if ttype == "regression" else \
                ["accuracy", "f1", "skill"]
            mean: dict[str, list[float]] = {k: [] for k in names}
            sd: dict[str, list[float]] = {k: [] for k in names}
            sizes, errs_x, errs_y = [], [], []
            for size in cfg.plan_sizes(plan):
                at = [c for c in mine if c["size"] == size]
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
                    errs_y.append(_metric(c, "nmse") if ttype == "regression" else 1.0 - c["test_best"]["accuracy"])
            pts = [p for p in kgd_points if p["model"] == plan.id and p["task"] == task]
            ksizes = sorted({p["size"] for p in pts})
            kg: dict[str, list[float]] = {}
            knames = ["mse", "nmse", "pearson", "spearman", "mse_target"] if ttype == "regression" else \
                ["accuracy", "f1", "mse_target"]
            for k in knames + ["t_holdout", "t_oracle"]:
                kg[k] = []
                for s in ksizes:
                    vals = [_kgd_metric(p, k) for p in pts if p["size"] == s]
                    kg[k].append(float(np.mean(vals)))
            kx = [p["size"] for p in pts]
            curves.append(TaskCurve(
                plan.id, task, ttype, plan.setting, lr_choice.get(plan.id, {}).get(task, {}).get("lr"), sizes,
                mean, sd, ksizes, kg, loglog_slope(errs_x, errs_y),
                loglog_slope(kx, [_kgd_metric(p, "nmse") if ttype == "regression"
                                  else 1.0 - p["test_holdout"]["accuracy"] for p in pts]),
                loglog_slope(kx, [p["test_holdout"]["mse_target"] for p in pts]),
                sum(1 for c in mine if c["skill"] < 0)))
    return CurvesResult(lr_choice, curves, cells, kgd_points)


def _metric(cell: dict, k: str) -> float:
    if k == "skill":
        return float(cell["skill"])
    if k == "nmse":
        v = cell["baseline"]["var_test"]
        return cell["test_best"]["mse"] / v if v > 0 else float("nan")
    x = cell["test_best"].get(k)
    return float(x) if x is not None else float("nan")


def _kgd_metric(p: dict, k: str) -> float:
    if k in ("t_holdout", "t_oracle"):
        return float(p[k])
    if k == "nmse":
        return p["test_holdout"]["mse"] / p["var_test"] if p["var_test"] > 0 else float("nan")
    x = p["test_holdout"].get(k)
    return float(x) if x is not None else float("nan")


def curves_csv(res: CurvesResult) -> str:
    """One row per fine-tuning cell: where it stopped, its test metrics and its scale-free score."""
    cols = ["model", "task", "setting", "size", "seed", "lr", "tuning", "n_train", "best_step", "stopped_step",
            "oracle_step", "skill", "mse", "pearson", "spearman", "accuracy", "f1", "failed"]
    lines = [",".join(cols)]
    for c in res.cells:
        row = []
        for k in cols:
            v = c.get(k, c.get("test_best", {}).get(k, ""))
            row.append(f"{v:.6g}" if isinstance(v, float) else ("" if v is None else str(v).replace(",", ";")))
        lines.append(",".join(row))
    return "\n".join(lines) + "\n"
