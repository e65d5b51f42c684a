"""Learning curves: test metric against training size, mean and band over seeds (paper Figure 2)."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .._runs import RunFolder
from ..config import finite_positive
from ..errors import ConfigError
from ..models import fingerprint, load_model
from ..tasks import get_spec
from .config import FinetuneConfig
from .loop import finetune

log = logging.getLogger(__name__)

# best: the kept model's test score; last: the last step's; baseline: the constant predictor's on the same test rows
COLUMNS = ["model", "task", "size", "seed", "setting", "lr", "best_step", "stopped_step", "stop_reason", "metric",
           "best", "last", "baseline"]


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _table(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _spec(base: FinetuneConfig, task: str) -> Any:
    return base.model_copy(update={"task": task}).task_spec()


def _check(base: FinetuneConfig, tasks: list[str], sizes: list[int], seeds: int) -> None:
    if not tasks:
        raise ConfigError("tasks: give at least one task")
    if not sizes or any(s < 2 for s in sizes):
        raise ConfigError(f"sizes: every training size must be >= 2, got {sizes}", param="sizes")
    finite_positive("seeds", seeds, allow_none=False)
    for t in tasks:
        _spec(base, t)


def learning_curve(base: FinetuneConfig, tasks: list[str], sizes: list[int], seeds: int, out: str | Path,
                   data_dir: str | None = None, progress: bool = True, overwrite: bool = False) -> list[dict]:
    """Train every (task, size, seed), early-stopped on a hold-out split, test on the task's test split.
    Finished cells are read back from curve.csv, so a half-finished sweep with the same key resumes."""
    _check(base, tasks, sizes, seeds)
    weights = fingerprint(load_model(base.model, pooling=base.pooling).backbone)
    key = {"config": base.model_dump(exclude={"task", "n_train", "seed", "save_model", "save_every", "tensorboard",
                                              "device"}),
           "weights": weights, "tasks": tasks, "sizes": sizes, "seeds": seeds}
    rf = RunFolder(out, "curve", key, overwrite)
    rf.open()
    path = rf.path("curve.csv")
    rows = _read(path)
    done = {(r["task"], int(r["size"]), int(r["seed"])) for r in rows}
    for task in tasks:
        for size in sizes:
            for seed in range(seeds):
                if (task, size, seed) in done:
                    continue
                cfg = base.model_copy(update={"task": task, "n_train": size, "seed": seed, "save_model": False})
                cell = rf.path(f"{_spec(base, task).name}-n{size}-s{seed}")
                res = finetune(cfg, cell, data_dir=data_dir, progress=progress, overwrite=True)
                for metric in res.test_best:
                    rows.append({"model": cfg.model, "task": task, "size": size, "seed": seed, "setting": cfg.setting,
                                 "lr": cfg.lr, "best_step": res.best_step, "stopped_step": res.stopped_step,
                                 "stop_reason": res.stop_reason, "metric": metric, "best": res.test_best[metric],
                                 "last": res.test_last.get(metric, float("nan")),
                                 "baseline": res.baseline_test.get(metric, float("nan"))})
                rf.write_text("curve.csv", _table(rows))
                log.info("%s n=%d seed=%d: %s", task, size, seed, res.test_best)
    for metric in ("mse", "accuracy", "f1"):
        rf.path(f"curve_{metric}.png")
    plot_curves(rows, rf.root, base)
    rf.finish(model=base.model, setting=base.setting, tasks=tasks, sizes=sizes, seeds=seeds)
    return rows


def _float(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a row from a curve.csv written before the baseline column: no value
        return float("nan")


def plot_curves(rows: list[dict], out: Path, base: FinetuneConfig | None = None) -> list[Path]:
    """One PNG per metric (mse for regression; accuracy and f1 for classification), tasks as lines named by the
    task's name, each with its constant predictor (training mean; majority class) as a dashed line."""
    from ..plots import curve_plot

    written = []
    for metric in ("mse", "accuracy", "f1"):
        series, consts, xs_all = {}, {}, set()
        for task in sorted({r["task"] for r in rows}):
            sel = [r for r in rows if r["task"] == task and r["metric"] == metric]
            spec = _spec(base, task) if base is not None else get_spec(task)
            if not sel or spec.type == ("classification" if metric == "mse" else "regression"):
                continue
            name = spec.name
            if metric == "f1" and spec.labels:
                name += f" ({'binary' if len(spec.labels) == 2 else 'macro'} f1)"
            sizes = sorted({int(r["size"]) for r in sel})
            vals = [[float(r["best"]) for r in sel if int(r["size"]) == s] for s in sizes]
            mean = np.array([np.mean(v) for v in vals])
            sd = np.array([np.std(v) for v in vals])
            series[name] = (mean, mean - sd, mean + sd, sizes)
            consts[name] = np.array([np.mean([_float(r.get("baseline")) for r in sel if int(r["size"]) == s])
                                     for s in sizes])
            xs_all.update(sizes)
        if not series:
            continue
        xs = sorted(xs_all)
        aligned, base_lines = {}, {}
        for name, (m, lo, hi, sizes) in series.items():
            c = consts[name]
            if sizes != xs:
                idx = [xs.index(s) for s in sizes]
                full = [np.full(len(xs), np.nan) for _ in range(4)]
                for arr, src in zip(full, (m, lo, hi, c), strict=True):
                    arr[idx] = src
                m, lo, hi, c = full
            aligned[name] = (m, lo, hi)
            if np.isfinite(c).any():
                base_lines[name] = c
        written.append(curve_plot(xs, aligned, out / f"curve_{metric}.png", "training samples", f"test {metric}",
                                  title=f"learning curves ({metric}, mean +- sd over seeds)", logx=True,
                                  baselines=base_lines))
    return written
