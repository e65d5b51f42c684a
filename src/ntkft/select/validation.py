"""Does the eNTK rank candidates as fine-tuning does? The validation harness of issue 28.

A candidate zoo (cuts of offline models, and intermediate-task checkpoints made by `ntkft finetune`), target tasks
never used for an intermediate candidate, every candidate fine-tuned with one rule for all (an epochs budget,
hold-out early stopping, the learning rate chosen on validation at the smallest n) at each n and seed; then per
task, n and predictor Kendall tau and Pearson between predicted and measured test score with permutation p, pooled over tasks by a
stratified permutation test. Baselines: LogME and H-score on the last layer's pooled features (ntkft's), the same
as transformer-ranker computes them (its estimators on layer-averaged features), and "more parameters is better".

    python -m ntkft.select.validation --config configs/select-validation.yaml --out runs/select-val \\
        --docs docs/results/select

Every unit (intermediate checkpoint, select run per task, peer scores per task, fine-tuning cell) is written when
done and skipped on a rerun: the same command resumes after a kill. Writes summary.json and README.md to --docs."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from .._io import write_json
from ..config import StrictModel, load_config, make
from ..errors import ConfigError, NtkftError
from .valreport import PREDICTORS, figures, kept_text, readme

log = logging.getLogger(__name__)


class ZooEntry(StrictModel):
    """One candidate: a model spec, an optional cut, and optionally an intermediate task it is fine-tuned on first."""

    name: str
    model: str
    layers: int | None = Field(None, ge=1)
    intermediate: str | None = Field(None, description="task the model is fine-tuned on first (full setting; "
                                     "`layers` then cuts the fine-tuned model)")


class ValidationConfig(StrictModel):
    """The validation design: zoo, targets, sizes, seeds, the one fine-tuning rule, the eNTK pool, permutations."""

    candidates: list[ZooEntry] = Field(..., min_length=3)
    tasks: list[str] = Field(..., min_length=1)
    sizes: list[int] = Field([64, 512], min_length=1)
    seeds: list[int] = Field([0, 1], min_length=1)
    pool: int = Field(256, ge=32, description="eNTK pool per task (predictions beyond it are extrapolated)")
    n_subsets: int = Field(20, ge=2)
    max_length: int = Field(64, ge=2)
    n_test: int = Field(200, ge=8)
    epochs: float = Field(3.0, gt=0, description="epochs budget of every fine-tuning cell")
    min_steps: int = Field(20, ge=1, description="at least this many optimiser steps")
    batch_size: int = Field(16, ge=1)
    lrs: list[float] = Field([2e-5, 1e-4], min_length=1, description="AdamW learning rates; the best on "
                             "validation at the smallest n and first seed of each (candidate, task) is used for all")
    patience: int = Field(5, ge=1)
    intermediate_n: int = Field(1000, ge=16)
    intermediate_steps: int = Field(200, ge=1)
    n_perm: int = Field(2000, ge=100)

    @model_validator(mode="after")
    def _disjoint(self) -> ValidationConfig:
        used = {e.intermediate for e in self.candidates if e.intermediate}
        if used & set(self.tasks):
            raise ValueError(f"tasks: {', '.join(sorted(used & set(self.tasks)))} made an intermediate candidate; "
                             "a target task must be new to every candidate")
        if len({e.name for e in self.candidates}) != len(self.candidates):
            raise ValueError("candidates: names must be unique")
        return self

    @classmethod
    def make(cls, **kw: Any) -> ValidationConfig:
        return make(cls, **kw)


def _error(metrics: dict[str, float]) -> float:
    """A fine-tuning run's test error in the eNTK curve's units: MSE (regression) or error rate (classification)."""
    return float(metrics["mse"]) if "mse" in metrics else 1.0 - float(metrics["accuracy"])


def _done(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


class Harness:
    """The validation run in `out` (resumable); `run()` returns the summary written to `docs`."""

    def __init__(self, cfg: ValidationConfig, out: str | Path, data_dir: str | None = None, progress: bool = True):
        self.cfg, self.out, self.data_dir, self.progress = cfg, Path(out), data_dir, progress
        self.out.mkdir(parents=True, exist_ok=True)
        marker = self.out / "validation.json"
        old = _done(marker)
        mine = cfg.model_dump()
        if old is not None and old.get("config") != mine:
            raise ConfigError(f"{self.out}: holds a validation run with another config; use another --out")
        if old is None and any(self.out.iterdir()):
            raise ConfigError(f"{self.out}: folder holds files ntkft did not write; choose an empty or new --out")
        write_json(marker, {"ntkft_validation": 1, "config": mine})

    # ------------------------------------------------------------------ units

    def spec(self, e: ZooEntry) -> str:
        """The model spec `select` and `finetune` take for entry `e` (an intermediate: its fine-tuned model folder)."""
        if e.intermediate is None:
            return e.model
        from ..finetune import FinetuneConfig, finetune

        run = self.out / "intermediate" / f"{Path(e.model).name}+{Path(e.intermediate).stem}"  # shared by its cuts
        if not (run / "model" / "config.json").is_file() or _done(run / "result.json") is None:
            t0 = time.process_time()
            cfg = FinetuneConfig.make(model=e.model, task=e.intermediate, n_train=self.cfg.intermediate_n,
                                      max_steps=self.cfg.intermediate_steps, n_test=self.cfg.n_test,
                                      max_length=self.cfg.max_length, batch_size=self.cfg.batch_size)
            finetune(cfg, run, data_dir=self.data_dir, progress=self.progress)
            write_json(run.parent / f"{run.name}.cpu.json", {"cpu_seconds": time.process_time() - t0})
        return str(run / "model")

    def cand_spec(self, e: ZooEntry) -> str:
        return self.spec(e) + (f"@{e.layers}" if e.layers else "")

    def predictions(self, task: str) -> dict[str, dict[str, Any]]:
        """select's predictions for every candidate on `task` (one resumable select run per task)."""
        from . import select
        from .config import SelectConfig

        cfg = SelectConfig(models=[self.cand_spec(e) for e in self.cfg.candidates], task=task,
                           n=max(self.cfg.sizes), pool=self.cfg.pool, max_length=self.cfg.max_length,
                           n_subsets=self.cfg.n_subsets)
        res = select(cfg, self.out / "select" / task, data_dir=self.data_dir, progress=self.progress)
        by_spec = {c.name: c for c in res.candidates}
        # post hoc (added after the first results, reported apart from the pre-stated test): the curve from the
        # model's own step-0 function, as fine-tuning starts (regression; classification starts at the constant)
        model_start = by_spec
        if res.task_type == "regression":
            again = select(cfg.model_copy(update={"start": "model"}), self.out / "select-model-start" / task,
                           data_dir=self.data_dir, progress=self.progress)
            model_start = {c.name: c for c in again.candidates}
        out: dict[str, dict[str, Any]] = {}
        from .run import at_n

        for e in self.cfg.candidates:
            c, cm = by_spec[self.cand_spec(e)], model_start[self.cand_spec(e)]
            assert c.curve is not None and cm.curve is not None
            at = {str(n): at_n(c.curve, n) for n in self.cfg.sizes}  # (mean, low, high, constant, extrapolated)
            out[e.name] = {"error_at": {n: v[0] for n, v in at.items()},
                           "error_at_model_start": {str(n): at_n(cm.curve, n)[0] for n in self.cfg.sizes},
                           "baseline_at": {n: v[3] for n, v in at.items()}, "beta": c.beta,
                           "kta": c.kta, "logme": c.logme, "hscore": c.hscore, "params": c.params,
                           "seconds": c.seconds}
        return out

    def peers(self, task: str) -> dict[str, dict[str, float | None]]:
        """LogME and H-score as transformer-ranker computes them: its estimators on layer-averaged pooled features
        of the same pool rows (None where transformer-ranker is not installed)."""
        path = self.out / "peers" / f"{task}.json"
        if (got := _done(path)) is not None:
            return got
        try:
            from transformer_ranker.estimators import HScore, LogME
        except ImportError:
            return {e.name: {"logme_tr": None, "hscore_tr": None} for e in self.cfg.candidates}
        from ..tasks import encode, get_spec, load_task, subsample
        from .config import parse_candidate
        from .run import build_candidate

        spec = get_spec(task)
        data = subsample(load_task(spec, "train", self.data_dir), self.cfg.pool, seed=0)
        reg = spec.type == "regression"
        y = torch.as_tensor(np.asarray(data.labels, dtype=np.float64 if reg else np.int64))
        out: dict[str, dict[str, float | None]] = {}
        for e in self.cfg.candidates:
            loaded, readout = build_candidate(parse_candidate(self.cand_spec(e)), 1, 1.0, 0)
            enc = encode(loaded.tokenizer, loaded.kind, data, max_length=self.cfg.max_length)
            f = layer_mean_features(readout, enc)
            out[e.name] = {"logme_tr": float(LogME(regression=reg).fit(f, y)),
                           "hscore_tr": None if reg else float(HScore().fit(f, y))}
        write_json(path, out)
        return out

    def cell(self, task: str, e: ZooEntry, n: int, seed: int, lr: float) -> dict[str, Any]:
        """One fine-tuning cell (resumable): test score in the eNTK's units (MSE, or error rate) and its cost."""
        from ..finetune import FinetuneConfig, finetune

        cid = f"{task}/{e.name}/n{n}-s{seed}-lr{lr:g}"
        rec_file = self.out / "cells" / f"{cid}.json"
        if (got := _done(rec_file)) is not None:
            if "baseline_error" not in got:  # cells written before the baseline was recorded: read it from the run
                res_file = self.out / "ft" / cid / "result.json"
                got["baseline_error"] = _error(json.loads(res_file.read_text())["baseline_test"])
            return got
        n_fit = n - max(1, int(round(0.2 * n)))
        steps = max(self.cfg.min_steps, math.ceil(self.cfg.epochs * n_fit / self.cfg.batch_size))
        cfg = FinetuneConfig.make(model=self.spec(e), task=task, setting="head" if e.layers else "full",
                                  layers=e.layers, n_train=n, n_test=self.cfg.n_test, seed=seed, lr=lr, max_steps=steps,
                                  batch_size=self.cfg.batch_size, patience=self.cfg.patience,
                                  max_length=self.cfg.max_length, save_model=False)
        t0, c0 = time.time(), time.process_time()
        res = finetune(cfg, self.out / "ft" / cid, data_dir=self.data_dir, progress=self.progress)
        rec = {"task": task, "candidate": e.name, "n": n, "seed": seed, "lr": lr, "val_loss": res.best_val,
               "test_error": _error(res.test_best), "baseline_error": _error(res.baseline_test),
               "steps": res.stopped_step, "best_step": res.best_step,
               "seconds": round(time.time() - t0, 2), "cpu_seconds": round(time.process_time() - c0, 2)}
        write_json(rec_file, rec)
        return rec

    def chosen_lr(self, task: str, e: ZooEntry) -> float:
        """The learning rate of (candidate, task): best validation loss at the smallest n and the first seed."""
        first = [self.cell(task, e, min(self.cfg.sizes), self.cfg.seeds[0], lr) for lr in self.cfg.lrs]
        return float(min(first, key=lambda r: math.inf if r["val_loss"] is None else r["val_loss"])["lr"])

    def measured(self, task: str, e: ZooEntry, n: int) -> dict[str, Any]:
        """Mean test error over seeds at the chosen learning rate (one rule for every candidate), beside the constant
        predictor's on the same test rows (the training mean, or the majority class, of the same training rows)."""
        lr = self.chosen_lr(task, e)
        recs = [self.cell(task, e, n, s, lr) for s in self.cfg.seeds]
        err, base = float(np.mean([r["test_error"] for r in recs])), float(np.mean([r["baseline_error"] for r in recs]))
        return {"test_error": err, "baseline_error": base, "beats_baseline": err < base, "lr": lr,
                "test_errors": [r["test_error"] for r in recs], "seconds": float(sum(r["seconds"] for r in recs)),
                "cpu_seconds": float(sum(r["cpu_seconds"] for r in recs))}

    # ------------------------------------------------------------------ the run

    def run(self, docs: str | Path | None = None) -> dict[str, Any]:
        t0 = time.time()
        tasks_out = []
        for task in self.cfg.tasks:
            pred = self.predictions(task)
            peer = self.peers(task)
            for n in self.cfg.sizes:
                meas = {e.name: self.measured(task, e, n) for e in self.cfg.candidates}
                tasks_out.append(analyse(task, n, pred, peer, meas, self.cfg))
        summary = summarise(self.cfg, tasks_out, time.time() - t0, self.out)
        write_json(self.out / "summary.json", summary)
        if docs is not None:
            d = Path(docs)
            d.mkdir(parents=True, exist_ok=True)
            write_json(d / "summary.json", summary)
            for name, png in figures(summary).items():
                (d / name).write_bytes(png)
            old = (d / "README.md").read_text() if (d / "README.md").is_file() else ""
            (d / "README.md").write_text(readme(summary, kept=kept_text(old)))
        return summary


def cell_rows(cfg: ValidationConfig) -> tuple[float, float]:
    """(training rows, evaluation rows) one (candidate, task) pair costs: the lr cells at the smallest n, the seeds
    at every n (an epochs budget; at least min_steps steps; early stopping can only shorten it); evaluation: about
    11 passes over the validation rows and 2 over the test rows per cell."""
    train = evals = 0.0
    small = min(cfg.sizes)
    for n in cfg.sizes:
        cells = len(cfg.seeds) + (len(cfg.lrs) - 1 if n == small else 0)
        n_fit = n - max(1, int(round(0.2 * n)))
        steps = max(cfg.min_steps, math.ceil(cfg.epochs * n_fit / cfg.batch_size))
        train += cells * steps * min(cfg.batch_size, n_fit)
        evals += cells * (11 * (n - n_fit) + 2 * cfg.n_test)
    return train, evals


def estimate(cfg: ValidationConfig, costs: dict[str, dict[str, float]]) -> dict[str, Any]:
    """CPU seconds of the whole run from per-candidate costs measured at small scale (`probe`): CPU s per
    training row (forward + backward), per evaluated row, and of the eNTK at the probe's N (scaled as N^1.5, the
    measured MiniLM growth from N = 64 to 512)."""
    train, evals = cell_rows(cfg)
    per: dict[str, float] = {}
    for e in cfg.candidates:
        c = costs[e.name]
        kern = c["kernel_cpu"] * (cfg.pool / c["kernel_n"]) ** 1.5
        per[e.name] = len(cfg.tasks) * (train * c["train_row"] + evals * c["eval_row"] + kern)
        if e.intermediate and not any(o.intermediate == e.intermediate and o.model == e.model
                                      for o in cfg.candidates[:cfg.candidates.index(e)]):
            per[e.name] += cfg.intermediate_steps * cfg.batch_size * c["train_row"]
    total = sum(per.values())
    return {"cpu_seconds": round(total), "wall_hours_at_1.6_cores": round(total / 1.6 / 3600, 2),
            "per_candidate_cpu_seconds": {k: round(v) for k, v in per.items()}}


def probe(cfg: ValidationConfig, data_dir: str | None = None, steps: int = 4, kernel_n: int = 32) -> dict[str, Any]:
    """Measure each base candidate's costs on the first task (a `steps`-step cell at batch_size, its evaluation,
    and the eNTK on `kernel_n` rows) and estimate the full run (intermediate candidates cost as their base)."""
    from ..finetune import FinetuneConfig, Trainer
    from ..kernel import kernel_matrix
    from ..tasks import encode, load_task, subsample
    from .config import parse_candidate
    from .run import build_candidate

    task = cfg.tasks[0]
    costs: dict[str, dict[str, float]] = {}
    for e in cfg.candidates:
        key = f"{e.model}@{e.layers}"
        if key in costs:
            costs[e.name] = costs[key]
            continue
        fc = FinetuneConfig.make(model=e.model, task=task, setting="head" if e.layers else "full", layers=e.layers,
                                 n_train=max(64, cfg.batch_size * 2), n_test=cfg.n_test, lr=cfg.lrs[0], max_steps=steps,
                                 batch_size=cfg.batch_size, max_length=cfg.max_length, save_model=False,
                                 eval_every=steps, eval_at_start=False)
        tr = Trainer(fc, progress=False).setup()
        loaded, readout = build_candidate(parse_candidate(e.model + (f"@{e.layers}" if e.layers else "")), 1, 1.0, 0)
        c0 = time.process_time()
        with torch.no_grad():
            for s in range(0, len(tr.test), 64):
                readout(tr.test.ids[s:s + 64], tr.test.mask[s:s + 64])
        eval_row = (time.process_time() - c0) / len(tr.test)
        c0 = time.process_time()
        tr.fit()  # one evaluation of the validation rows and two of the test rows besides the steps
        spent = time.process_time() - c0 - eval_row * (len(tr.val) + 2 * len(tr.test))
        train_row = max(spent, 0.0) / (steps * cfg.batch_size)
        data = subsample(load_task(task, "train", data_dir), kernel_n, seed=0)
        enc = encode(loaded.tokenizer, loaded.kind, data, max_length=cfg.max_length)
        c0 = time.process_time()
        kernel_matrix(readout, enc, progress=False)
        costs[key] = costs[e.name] = {"train_row": train_row, "eval_row": eval_row,
                                      "kernel_cpu": time.process_time() - c0, "kernel_n": kernel_n}
        log.info("probe %s: %.3f CPU s per training row, %.3f per evaluated row, eNTK(%d) %.1f CPU s", e.name,
                 train_row, eval_row, kernel_n, costs[key]["kernel_cpu"])
    return {"costs": {e.name: costs[e.name] for e in cfg.candidates}, "estimate": estimate(cfg, costs)}


def layer_mean_features(readout: Any, enc: dict[str, torch.Tensor], batch: int = 32) -> torch.Tensor:
    """Pooled hidden states averaged over the blocks (embedding output excluded): transformer-ranker's layer mean."""
    from ..models.readout import pool, position_ids_from_mask

    out = []
    readout.eval()
    with torch.no_grad():
        for s in range(0, len(enc["input_ids"]), batch):
            ids, mask = enc["input_ids"][s:s + batch], enc["attention_mask"][s:s + batch]
            kw: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "output_hidden_states": True}
            if readout.kind == "decoder":
                order = torch.argsort(1 - mask.long(), dim=1, stable=True)
                ids, mask = ids.gather(1, order), mask.gather(1, order)
                kw.update(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                          use_cache=False)
            hs = readout.backbone(**kw).hidden_states[1:]
            out.append(torch.stack([pool(h, mask, readout.kind) for h in hs]).mean(0).double())
    return torch.cat(out)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def pearson_perm(x: Any, y: Any, n_perm: int, seed: int = 0) -> tuple[float, float]:
    """Pearson r and its two-sided permutation p."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    r = _pearson(xa, ya)
    if math.isnan(r):
        return r, math.nan
    rng = np.random.default_rng(seed)
    null = np.array([_pearson(xa, rng.permutation(ya)) for _ in range(n_perm)])
    return r, float((np.sum(np.abs(null) >= abs(r) - 1e-12) + 1) / (n_perm + 1))


def goodness(name: str, p: dict[str, Any], peer: dict[str, Any], n: int) -> float | None:
    """Predictor `name` as a score where higher predicts a better fine-tuned model."""
    if name == "entk_curve":
        return -float(p["error_at"][str(n)])
    if name == "entk_curve_model_start":
        return -float(p["error_at_model_start"][str(n)])
    v = peer.get(name) if name.endswith("_tr") else p.get(name)
    return None if v is None or not math.isfinite(float(v)) else float(v)


def analyse(task: str, n: int, pred: dict, peer: dict, meas: dict, cfg: ValidationConfig) -> dict[str, Any]:
    """One (task, n) row of summary.json: predictions, measurement, Kendall tau and Pearson with permutation p."""
    from .stats import kendall_perm

    names = [e.name for e in cfg.candidates]
    score = np.array([-meas[c]["test_error"] for c in names])  # higher = better fine-tuned model
    predicted: dict[str, list[float | None]] = {k: [goodness(k, pred[c], peer[c], n) for c in names]
                                               for k in PREDICTORS}
    kendall, pearson = {}, {}
    for k, vals in predicted.items():
        if any(v is None for v in vals) or np.ptp(np.asarray(vals, float)) == 0:
            continue
        tau, p = kendall_perm(np.asarray(vals, float), score, n_perm=cfg.n_perm)
        r, pp = pearson_perm(np.asarray(vals, float), score, cfg.n_perm)
        kendall[k], pearson[k] = {"tau": tau, "p": p}, {"r": r, "p": pp}
    base = float(np.mean([meas[c]["baseline_error"] for c in names]))
    return {"name": task, "n": n, "measured": {c: meas[c] for c in names}, "predicted": predicted,
            "baseline_error": base, "beats_baseline": [c for c in names if meas[c]["beats_baseline"]],
            "predicted_error": {c: float(pred[c]["error_at"][str(n)]) for c in names},
            "predicted_error_model_start": {c: float(pred[c]["error_at_model_start"][str(n)]) for c in names},
            "predicted_baseline": float(np.mean([pred[c]["baseline_at"][str(n)] for c in names])),
            "entk_seconds": {c: pred[c]["seconds"] for c in names}, "kendall": kendall, "pearson": pearson,
            "candidates": names}


def summarise(cfg: ValidationConfig, tasks: list[dict], seconds: float, out: Path) -> dict[str, Any]:
    """Pooled stratified permutation tests per predictor and n, costs, and the verdict."""
    from .stats import stratified_perm_test

    def pool(rows_of: Callable[[dict[str, Any]], bool]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for n in cfg.sizes:
            rows = [t for t in tasks if t["n"] == n and rows_of(t)]
            for k in PREDICTORS:
                groups = [(np.asarray(t["predicted"][k], float), -np.array([t["measured"][c]["test_error"]
                                                                            for c in t["candidates"]]))
                          for t in rows if k in t["kendall"]]
                if groups:
                    tau, p = stratified_perm_test(groups, stat="kendall", n_perm=cfg.n_perm, alternative="greater")
                    out.setdefault(k, {})[str(n)] = {"tau": tau, "p": p, "tasks": len(groups)}
        return out

    pooled = pool(lambda t: True)
    # post hoc: only (task, n) rows where fine-tuning learned, i.e. at least half the candidates beat the constant
    # predictor (elsewhere the measured ranking is of models that all sit at or below the constant: noise)
    learned = pool(lambda t: 2 * len(t["beats_baseline"]) >= len(t["candidates"]))
    cells = [json.loads(p.read_text()) for p in (out / "cells").rglob("*.json")] if (out / "cells").is_dir() else []
    entk_s = [s for t in tasks for s in t["entk_seconds"].values()]
    cost = {"entk_seconds_per_candidate_task": float(np.mean(entk_s)) if entk_s else None,
            "finetune_seconds_per_cell": float(np.mean([c["seconds"] for c in cells])) if cells else None,
            "finetune_seconds_per_cell_at_n": {str(n): float(np.mean(v)) for n in cfg.sizes
                                               if (v := [c["seconds"] for c in cells if c["n"] == n])},
            "finetune_cpu_seconds": float(sum(c["cpu_seconds"] for c in cells)),
            "finetune_cells": len(cells), "wall_seconds_this_call": round(seconds, 1)}
    beats = {str(n): {"pairs": sum(len(t["beats_baseline"]) for t in tasks if t["n"] == n),
                      "of": sum(len(t["candidates"]) for t in tasks if t["n"] == n)} for n in cfg.sizes}
    return {"candidates": [e.model_dump() for e in cfg.candidates], "tasks": tasks,
            "pooled": pooled, "pooled_where_learned": learned, "beats_baseline": beats, "cost": cost,
            "config": cfg.model_dump(), "verdict": verdict(pooled, cfg, cost, beats)}


def verdict(pooled: dict, cfg: ValidationConfig, cost: dict, beats: dict | None = None) -> str:
    """One paragraph: does the eNTK curve rank better than the feature scores, at which n, at what cost; and how
    many fine-tuned (candidate, task) pairs beat the constant predictor (a ranking of models that do not is noise)."""
    parts = []
    for n in map(str, cfg.sizes):
        e = pooled.get("entk_curve", {}).get(n)
        peers = {k: pooled[k][n] for k in ("logme_tr", "hscore_tr", "logme", "hscore", "params")
                 if n in pooled.get(k, {})}
        if e is None:
            parts.append(f"n = {n}: no eNTK ranking")
            continue
        best = max(peers.items(), key=lambda kv: kv[1]["tau"]) if peers else None
        sig = "significant" if e["p"] <= 0.05 else "not significant"
        cmp = (f"{'better than' if e['tau'] > best[1]['tau'] else 'not better than'} the best feature score "
               f"({best[0]}: tau {best[1]['tau']:.2f}, p {best[1]['p']:.3f})") if best else ""
        parts.append(f"n = {n}: eNTK curve pooled Kendall tau {e['tau']:.2f} (p {e['p']:.3f}, {sig}), {cmp}")
    ent, ft = cost.get("entk_seconds_per_candidate_task"), cost.get("finetune_seconds_per_cell_at_n", {})
    tail = (f" Cost: {ent:.0f} s per candidate and task for the eNTK predictions vs "
            + ", ".join(f"{v:.0f} s at n = {n}" for n, v in ft.items()) + " per fine-tuning run (one seed, one lr)."
            if ent is not None and ft else "")
    base = (" Fine-tuning beat the constant predictor on the same test rows in "
            + ", ".join(f"{b['pairs']} of {b['of']} (candidate, task) pairs at n = {n}" for n, b in beats.items()) + "."
            if beats else "")
    return "; ".join(parts) + "." + tail + base


def main(argv: list[str] | None = None) -> int:
    """`python -m ntkft.select.validation`: run (or --probe) the validation; bad input -> one line, exit 2."""
    ap = argparse.ArgumentParser(prog="python -m ntkft.select.validation", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", default="runs/select-validation")
    ap.add_argument("--docs", default=None, help="also write summary.json and README.md here")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--probe", action="store_true", help="only measure per-candidate costs at small scale and "
                    "estimate the full run's CPU time (prints JSON; writes nothing)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg = load_config(ValidationConfig, a.config)
        if a.probe:
            print(json.dumps(probe(cfg, a.data_dir), indent=2))
            return 0
        s = Harness(cfg, a.out, a.data_dir).run(a.docs)
    except NtkftError as e:
        print(f"ntkft: error: {e}", file=sys.stderr)
        return 2
    print(s["verdict"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
