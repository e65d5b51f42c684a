"""`ntkft efficiency`: the powered experiment of issue 27, resumable per unit.

Units (each a file carrying its own key; a unit whose key differs is recomputed, never read back):
  kernels/<task>.safetensors        the eNTK of the fine-tuned model on the pool rows of one input set (a task
                                    and its same-input controls share it), with the model's facts in its meta
  linear/<variant>.json             tier (a) and the predictors: beta, KTA, LogME, H-score, kernel-GD curve
  cells/<variant>/n<N>-s<S>/result.json   tier (b): one fine-tuning cell, per-row test errors
Then the aggregate: summary.json (issue 27's schema), tasks.csv, figures/, README.md."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._runs import RunFolder
from ..errors import ConfigError
from .config import EfficiencyConfig
from .kernel import compare_facts, compute_kernel, facts_meta, kernel_facts, read_facts, readout, weights_fp
from .variants import Variant, load_variants, n_val_at, pool_rows

log = logging.getLogger(__name__)


# part of every tier-(a) unit's key: raise it when linear_unit's output changes (8: the parametric beta interval)
LINEAR_VERSION = 8


class InjectedFault(RuntimeError):
    """Raised by `run(..., fail_after=k)` after k computed units (the resume test's stand-in for a kill)."""


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass
class Units:
    """Bookkeeping of computed and reused units (and the fault injector)."""

    fail_after: int | None = None
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    def done(self, name: str, cpu: float) -> None:
        self.computed.append(name)
        kind = name.split("/")[0]
        self.cpu[kind] = self.cpu.get(kind, 0.0) + cpu
        if self.fail_after is not None and len(self.computed) >= self.fail_after:
            raise InjectedFault(f"injected fault after {len(self.computed)} units (last: {name})")


def _read_json(path: Path, key: str) -> dict | None:
    try:
        got = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return got if isinstance(got, dict) and got.get("key") == key else None


def _read_kernel(path: Path, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("key") != key:
                return None
            return {k: fh.get_tensor(k).numpy() for k in fh.keys()}, read_facts(meta)
    except (SafetensorError, OSError, ValueError):
        return None  # a damaged file is recomputed


def _device(cfg: EfficiencyConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' asked for, but no CUDA device is available")
    return torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")


def kernel_units(cfg: EfficiencyConfig, rf: RunFolder, variants: dict[str, Variant], units: Units,
                 progress: bool) -> dict[str, tuple[dict[str, np.ndarray], dict[str, Any], str]]:
    """The kernel of every input set: (arrays K, F, f0, rows; facts; key)."""
    from ..models import load_model

    loaded = load_model(cfg.model)
    weights = weights_fp(loaded)
    model = readout(cfg, loaded)
    facts = kernel_facts(cfg, weights, model)
    dev = _device(cfg)
    out = {}
    for task in tqdm(cfg.tasks, desc="kernels", disable=not progress, unit="kernel"):
        v = variants[task]
        rows = pool_rows(len(v.train_a), cfg.pool)
        texts = [v.train_a[i] + "\x00" + (v.train_b[i] if v.train_b is not None else "") for i in rows]
        key = _sha({"facts": facts, "texts": _sha(texts), "pool": cfg.pool})
        name = f"kernels/{task}.safetensors"
        got = _read_kernel(rf.root / name, key)
        if got is None:
            c0 = time.process_time()
            t = compute_kernel(cfg, model.to(dev), loaded.tokenizer, [v.train_a[i] for i in rows],
                               [v.train_b[i] for i in rows] if v.train_b is not None else None, progress=progress)
            arrays = {k: x.cpu() for k, x in t.items()} | {"rows": torch.as_tensor(rows)}
            cpu = time.process_time() - c0
            rf.save_tensors(name, arrays, facts_meta(facts, key) | {"cpu_seconds": f"{cpu:.1f}"})
            got = ({k: x.numpy() for k, x in arrays.items()}, facts)
            units.done(name, cpu)
        else:
            units.reused.append(name)
        out[task] = (got[0], got[1], key)
    return out


def linear_units(cfg: EfficiencyConfig, rf: RunFolder, variants: dict[str, Variant], kernels: dict, units: Units,
                 progress: bool) -> dict[str, dict]:
    """Tier (a) and the predictors per variant (beta computed once per input set)."""
    from .linear import betas, linear_unit

    beta_cache: dict[str, dict] = {}
    out = {}
    for name, v in tqdm(variants.items(), desc="tier (a)", disable=not progress, unit="variant"):
        arrays, _, kkey = kernels[v.parent]
        y = v.y_train[arrays["rows"].astype(np.int64)]
        key = _sha({"version": LINEAR_VERSION, "kernel": kkey, "y": _sha(y.round(8).tolist()),
                    "linear": cfg.linear.model_dump(),
                    "beta_draws": cfg.beta_draws, "paper_n": cfg.paper_n})
        fname = f"linear/{name}.json"
        got = _read_json(rf.root / fname, key)
        if got is None:
            c0 = time.process_time()
            if v.parent not in beta_cache:
                beta_cache[v.parent] = betas(cfg, arrays["K"])
            got = linear_unit(cfg, arrays["K"], arrays["F"], y, v.classification, beta_cache[v.parent]) | {"key": key}
            rf.write_json(fname, got)
            units.done(fname, time.process_time() - c0)
        else:
            units.reused.append(fname)
            beta_cache.setdefault(v.parent, got["beta"])
        out[name] = got
    return out


def cell_units(cfg: EfficiencyConfig, rf: RunFolder, variants: dict[str, Variant], kernels: dict, units: Units,
               progress: bool) -> dict[str, dict[int, list[dict]]]:
    """Tier (b): every fine-tuning cell; each model is checked against its kernel file's facts first."""

    ft = cfg.finetune
    fits = {(v.name, s) for v in variants.values() for s in ft.sizes
            if s + n_val_at(s, ft.val_frac, ft.min_val) <= len(v.train_a)}
    for v in variants.values():
        if v.control is None and any((v.name, s) not in fits for s in ft.sizes):
            log.warning("%s: %d training rows; sizes %s (+ validation rows) do not fit and are left out", v.name,
                        len(v.train_a), [s for s in ft.sizes if (v.name, s) not in fits])
    jobs = [(v, s, seed) for v in variants.values() for s in ft.sizes if (v.name, s) in fits
            for seed in range(ft.seeds)]
    out: dict[str, dict[int, list[dict]]] = {v: {s: [] for s in cfg.finetune.sizes} for v in variants}
    y_fp = {v.name: (_sha(v.y_train.round(8).tolist()), _sha([v.test_a, v.test_b, v.y_test.round(8).tolist()]))
            for v in variants.values()}
    todo = []
    for v, size, seed in jobs:
        _, facts, kkey = kernels[v.parent]
        key = _sha({"kernel": kkey, "facts": facts, "finetune": ft.model_dump(exclude={"sizes", "seeds", "workers"}),
                    "size": size, "seed": seed, "n_val": n_val_at(size, ft.val_frac, ft.min_val),
                    "y": y_fp[v.name][0], "test": y_fp[v.name][1]})
        folder = f"cells/{v.name}/n{size}-s{seed}"
        got = _read_json(rf.root / folder / "result.json", key)
        if got is None:
            todo.append((v, size, seed, folder, key, facts))
        else:
            units.reused.append(folder)
            out[v.name][size].append(got)
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="tier (b): fine-tuning", disable=not progress,
               unit="cell")

    def finish(folder: str, key: str, got: dict) -> None:
        got = got | {"key": key}
        rf.write_json(f"{folder}/result.json", got)
        out[got["variant"]][got["size"]].append(got)
        bar.update()
        units.done(f"{folder}/result.json", got["cpu_seconds"])

    try:
        _cells(cfg, rf, todo, bar, finish)
    finally:
        bar.close()  # before any error line, so that the line is the last one printed
    for per in out.values():
        for cells in per.values():
            cells.sort(key=lambda c: c["seed"])
    return out


def _cells(cfg: EfficiencyConfig, rf: RunFolder, todo: list, bar: Any, finish: Any) -> None:
    """Fine-tune the cells `todo` here (workers = 1) or in a pool of one-thread processes; `finish` writes each."""
    from .cells import run_cell

    ft = cfg.finetune
    if ft.workers == 1:
        for v, size, seed, folder, key, facts in todo:
            bar.set_postfix_str(f"{v.name} n={size} seed={seed}")
            rf.path(folder)
            finish(folder, key, run_cell(cfg, v, size, seed, rf.root / folder / "task", facts))
    elif todo:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        pool = ProcessPoolExecutor(ft.workers, multiprocessing.get_context("spawn"), _one_thread)
        try:
            futures = {}
            for v, size, seed, folder, key, facts in sorted(todo, key=lambda j: -j[1]):  # largest first
                rf.path(folder)
                futures[pool.submit(run_cell, cfg, v, size, seed, rf.root / folder / "task", facts)] = (folder, key)
            for f in as_completed(futures):
                finish(*futures[f], f.result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _one_thread() -> None:
    """A fine-tuning worker's share of the cores: one thread (workers = cores)."""
    torch.set_num_threads(1)


def check_kernel_file(path: str | Path, cfg: EfficiencyConfig, tr_facts: dict[str, Any]) -> None:
    """Compare the facts in a kernel file's meta with a fine-tuning model's (ConfigError on a mismatch)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        compare_facts(read_facts(fh.metadata()), tr_facts, str(path))


def run(cfg: EfficiencyConfig, out: str | Path, data_dir: str | None = None, overwrite: bool = False,
        progress: bool = True, docs: str | Path | None = None, fail_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) the experiment into `out`; write summary.json, README.md and figures there (and in `docs`)."""
    from .report import aggregate, write_report

    t0 = time.time()
    variants = load_variants(cfg, data_dir)
    rf = RunFolder(out, "efficiency", {"experiment": "efficiency", "model": cfg.model}, overwrite)
    rf.open()
    rf.write_json("config.json", cfg.model_dump())
    units = Units(fail_after)
    kernels = kernel_units(cfg, rf, variants, units, progress)
    linear = linear_units(cfg, rf, variants, kernels, units, progress)
    cells = cell_units(cfg, rf, variants, kernels, units, progress)
    timings = {"wall_seconds_this_call": time.time() - t0, "cpu_seconds_computed": units.cpu,
               "computed": len(units.computed), "reused": len(units.reused)}
    summary = aggregate(cfg, variants, linear, cells, timings)
    write_report(summary, rf, docs)
    rf.finish(computed=len(units.computed), reused=len(units.reused))
    return {"summary": summary, "computed": units.computed, "reused": units.reused}
