"""Learning curves: test metric against training size, mean and band over seeds (paper Figure 2)."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from .._io import atomic_write_text
from ..tasks import get_spec
from .config import FinetuneConfig
from .loop import finetune

log = logging.getLogger(__name__)

COLUMNS = ["task", "size", "seed", "setting", "best_step", "stopped_step", "stop_reason", "metric", "best", "last"]


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _write(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def learning_curve(base: FinetuneConfig, tasks: list[str], sizes: list[int], seeds: int, out: str | Path,
                   data_dir: str | None = None, progress: bool = True) -> list[dict]:
    """Train every (task, size, seed), early-stopped on a hold-out split, test on the task's test split.
    Finished cells are read back from curve.csv, so a half-finished sweep resumes."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "curve.csv"
    rows = _read(path)
    done = {(r["task"], int(r["size"]), int(r["seed"])) for r in rows}
    for task in tasks:
        for size in sizes:
            for seed in range(seeds):
                if (task, size, seed) in done:
                    continue
                cfg = base.model_copy(update={"task": task, "n_train": size, "seed": seed, "save_model": False})
                res = finetune(cfg, out / f"{task}-n{size}-s{seed}", data_dir=data_dir, progress=progress)
                for metric in res.test_best:
                    rows.append({"task": task, "size": size, "seed": seed, "setting": cfg.setting,
                                 "best_step": res.best_step, "stopped_step": res.stopped_step,
                                 "stop_reason": res.stop_reason, "metric": metric, "best": res.test_best[metric],
                                 "last": res.test_last.get(metric, float("nan"))})
                _write(path, rows)
                log.info("%s n=%d seed=%d: %s", task, size, seed, res.test_best)
    plot_curves(rows, out)
    return rows


def plot_curves(rows: list[dict], out: Path) -> list[Path]:
    """One PNG per metric (mse for regression; accuracy and f1 for classification), tasks as lines."""
    from ..plots import curve_plot

    written = []
    for metric in ("mse", "accuracy", "f1"):
        series, xs_all = {}, set()
        for task in sorted({r["task"] for r in rows}):
            sel = [r for r in rows if r["task"] == task and r["metric"] == metric]
            if not sel or get_spec(task).type == ("classification" if metric == "mse" else "regression"):
                continue
            sizes = sorted({int(r["size"]) for r in sel})
            vals = [[float(r["best"]) for r in sel if int(r["size"]) == s] for s in sizes]
            mean = np.array([np.mean(v) for v in vals])
            sd = np.array([np.std(v) for v in vals])
            series[task] = (mean, mean - sd, mean + sd, sizes)
            xs_all.update(sizes)
        if not series:
            continue
        xs = sorted(xs_all)
        aligned = {}
        for task, (m, lo, hi, sizes) in series.items():
            if sizes != xs:
                idx = [xs.index(s) for s in sizes]
                full = [np.full(len(xs), np.nan) for _ in range(3)]
                for arr, src in zip(full, (m, lo, hi), strict=True):
                    arr[idx] = src
                m, lo, hi = full
            aligned[task] = (m, lo, hi)
        written.append(curve_plot(xs, aligned, out / f"curve_{metric}.png", "training samples", f"test {metric}",
                                  title=f"learning curves ({metric}, mean +- sd over seeds)", logx=True))
    return written
