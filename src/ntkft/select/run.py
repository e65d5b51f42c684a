"""`ntkft.select`: rank candidate checkpoints for a task from their eNTKs and predict how much data each needs.

Per candidate: the model `ntkft finetune` would build (same cut, head sigma and seed, out_dim; eval mode), its eNTK
on a shared pool of the task's training rows, and from it the predicted learning curve (hold-out early-stopped kernel
GD over random subsets), the error at n, the n for a target error, beta with its interval, the rate 2b/(2b+1), KTA,
and LogME / H-score on the same model's pooled features. Each candidate is one resumable unit of the run folder."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._runs import RunFolder, digest
from ..errors import ConfigError, KernelError
from ..kernel import kernel_matrix
from ..kernel.api import trace_outputs
from ..kernel.params import num_params, select_params
from ..models import LoadedModel, Readout, fingerprint, load_model
from ..spectrum import estimate_beta
from ..tasks import TaskData, encode, load_task, subsample
from .config import Candidate, SelectConfig
from .result import CandidateResult, Curve, SelectResult

log = logging.getLogger(__name__)


def _features(readout: Readout, enc: dict[str, torch.Tensor], batch: int = 32) -> np.ndarray:
    """Pooled final hidden states of the pool rows (eval mode): what LogME and H-score read."""
    readout.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(enc["input_ids"]), batch):
            out.append(readout.features(enc["input_ids"][s:s + batch], enc["attention_mask"][s:s + batch]).double())
    return torch.cat(out).numpy()


def build_candidate(c: Candidate, out_dim: int, sigma: float, seed: int) -> tuple[LoadedModel, Readout]:
    """The module `ntkft finetune --model M [--setting head --layers K]` builds before its first step
    (finetune's Setting.build: cut, then the seeded new head), in eval mode (no dropout in the eNTK)."""
    loaded = load_model(c.model)
    if c.layers is not None:
        if c.layers >= loaded.num_layers:
            raise ConfigError(f"models: '{c.name}' cuts after block {c.layers} but the model has {loaded.num_layers}",
                              param="models")
        loaded = loaded.truncate(c.layers)
    readout = Readout.from_loaded(loaded, out_dim=out_dim, sigma=sigma, seed=seed)
    readout.eval()
    return loaded, readout


def curve_sizes(pool: int, n: int, lo: int = 16, points: int = 6) -> list[int]:
    """Sizes of the predicted curve: geometric from `lo` to 3/4 of the pool (the rest scores), plus n if it fits."""
    top = int(0.75 * pool)
    sizes = {int(round(x)) for x in np.geomspace(min(lo, top), top, points)}
    if n <= top:
        sizes.add(n)
    return sorted(sizes)


def _interp_log(sizes: list[int], vals: list[float], n: float) -> float:
    return float(np.interp(math.log(n), np.log(sizes), vals))


def at_n(curve: Curve, n: int) -> tuple[float, float, float, float, bool]:
    """(mean, low, high, baseline) of the predicted error at n; beyond the pool c + a n^-r fitted to each line."""
    from .stats import fit_rate

    if n <= curve.sizes[-1]:
        vals = [_interp_log(curve.sizes, getattr(curve, k), n) for k in ("mean", "low", "high", "baseline")]
        return vals[0], vals[1], vals[2], vals[3], False
    out = []
    for k in ("mean", "low", "high"):
        f = fit_rate(curve.sizes, getattr(curve, k), n_boot=0)
        out.append(float(f.c + f.a * n ** (-f.r)))
    return out[0], out[1], out[2], curve.baseline[-1], True


def n_for(curve: Curve, target: float) -> tuple[float | None, bool]:
    """The n at which the predicted mean error reaches `target` (log-interpolated; extrapolated with c + a n^-r
    beyond the pool, flagged); None where even the fitted limit c stays above it."""
    from .stats import fit_rate

    m = curve.mean
    for i, v in enumerate(m):
        if v <= target:
            if i == 0:
                return float(curve.sizes[0]), False
            x0, x1, y0, y1 = math.log(curve.sizes[i - 1]), math.log(curve.sizes[i]), m[i - 1], m[i]
            return float(math.exp(x0 + (x1 - x0) * (y0 - target) / (y0 - y1))), False
    f = fit_rate(curve.sizes, m, n_boot=0)
    if f.a <= 0 or target <= f.c:
        return None, True
    return float((f.a / (target - f.c)) ** (1 / f.r)), True


def predict(cand: CandidateResult, k: np.ndarray, feats: np.ndarray, y: np.ndarray, classification: bool,
            cfg: SelectConfig, start: np.ndarray | None = None) -> CandidateResult:
    """Fill in every predictor from the candidate's kernel (N, N) and pooled features (`start`: the model's
    step-0 outputs when the curve starts there, `SelectConfig.start`)."""
    from .predictors import hscore, kta, logme, predicted_curve

    pc = predicted_curve(k, y, curve_sizes(len(y), cfg.n), n_subsets=cfg.n_subsets, classification=classification,
                         seed=cfg.seed, start=start)
    curve = Curve(sizes=list(pc.sizes), mean=list(pc.mean), low=list(pc.low), high=list(pc.high),
                  baseline=list(pc.baseline), metric=pc.metric)
    mean, low, high, base, extra = at_n(curve, cfg.n)
    ci = estimate_beta(k, seed=cfg.seed)
    upd: dict[str, Any] = dict(curve=curve, error_at_n=mean, error_at_n_low=low, error_at_n_high=high,
                               error_at_n_extrapolated=extra, baseline_at_n=base, beta=ci.beta, beta_low=ci.low,
                               beta_high=ci.high, rate=2 * ci.beta / (2 * ci.beta + 1),
                               kta=kta(k, y, classification=classification),
                               logme=logme(feats, y, classification=classification),
                               hscore=hscore(feats, y.astype(int)) if classification else None)
    if cfg.target_error is not None:
        upd["n_for_target"], upd["n_for_target_extrapolated"] = n_for(curve, cfg.target_error)
    return cand.model_copy(update=upd)


class _Pool:
    """The shared pool of training rows (same rows for every candidate)."""

    def __init__(self, cfg: SelectConfig, data_dir: str | None) -> None:
        from ..tasks import get_spec
        from ..tasks.spec import TaskSpec

        self.spec: TaskSpec = get_spec(cfg.task)
        full = load_task(self.spec, "train", data_dir)
        if cfg.pool > len(full):
            raise ConfigError(f"pool: {cfg.pool} exceeds the {len(full)} training rows of '{self.spec.name}'", param="pool")
        self.data: TaskData = subsample(full, cfg.pool, seed=cfg.seed)
        self.classification = self.spec.type == "classification"
        self.y = np.asarray(self.data.labels, dtype=np.int64 if self.classification else np.float64)
        self.out_dim = self.data.num_classes if self.classification else 1
        # the curves start at the model's own step 0 (regression only: logits do not map onto one-hot targets)
        self.model_start = cfg.start == "model" and not self.classification
        if cfg.start == "model" and self.classification:
            log.warning("start 'model' applies to regression; the curves of %s start at the majority class",
                        self.spec.name)


def candidate_unit(c: Candidate, pool: _Pool, cfg: SelectConfig, rf: RunFolder | None, idx: int,
                   progress: bool) -> CandidateResult:
    """One candidate, resumable: its result JSON (and its kernel) under the run folder when one is given."""
    t0 = time.time()
    loaded, readout = build_candidate(c, pool.out_dim, cfg.sigma, cfg.seed)
    loaded.check_length(cfg.max_length)
    key = {"name": c.name, "model": c.model, "layers": c.layers, "weights": fingerprint(readout), "out_dim": pool.out_dim}
    res_file, k_file = f"candidates/{idx:02d}.json", f"kernels/{idx:02d}.safetensors"
    if rf is not None and (rf.root / res_file).is_file():
        saved = json.loads((rf.root / res_file).read_text())
        if saved.get("key") == digest(key):
            log.info("%s: candidate %s already done", rf.root, c.name)
            return CandidateResult.model_validate(saved["result"])
    cand = CandidateResult(name=c.name, model=c.model, layers=c.layers, setting=c.setting,
                           params=num_params(select_params(readout, "all")))
    enc = encode(loaded.tokenizer, loaded.kind, pool.data, max_length=cfg.max_length)
    k: np.ndarray | None = None
    if rf is not None and (rf.root / k_file).is_file():
        from safetensors.torch import load_file

        t = load_file(str(rf.root / k_file))
        if t.get("key") is not None and bytes(t["key"].tolist()).decode() == digest(key):
            k = t["k"].numpy()
    tk = time.time()
    if k is None:
        log.info("candidate %s: eNTK on %d rows", c.name, len(pool.y))
        kt = kernel_matrix(readout, enc, method=cfg.method, sketch_dim=cfg.sketch_dim, seed=cfg.seed, progress=progress,
                           checkpoint_dir=rf.path(f"work/{idx:02d}") if rf is not None else None)
        if pool.out_dim > 1:
            kt = trace_outputs(kt, pool.out_dim) / pool.out_dim
        k = kt.double().numpy()
        if rf is not None:
            rf.save_tensors(k_file, {"k": torch.from_numpy(k).contiguous(),
                                     "key": torch.tensor(list(digest(key).encode()), dtype=torch.uint8)})
    cand.kernel_seconds = round(time.time() - tk, 2)
    feats = _features(readout, enc)
    start = None
    if pool.model_start:
        with torch.no_grad():  # g_0 = the new head on the pooled features: the step-0 model, before its bias
            start = readout.head(torch.from_numpy(feats).to(readout.head.weight.dtype)).double().numpy()
    cand = predict(cand, k, feats, pool.y, pool.classification, cfg, start)
    cand.seconds = round(time.time() - t0, 2)
    if rf is not None:
        rf.write_json(res_file, {"key": digest(key), "result": json.loads(cand.model_dump_json())})
    return cand


def _rank(cands: list[CandidateResult]) -> list[CandidateResult]:
    ok = sorted((c for c in cands if c.status == "ok"), key=lambda c: math.inf if c.error_at_n is None else c.error_at_n)
    return ok + [c for c in cands if c.status != "ok"]


def select(cfg: SelectConfig | None = None, out: str | Path | None = None, data_dir: str | None = None,
           progress: bool = True, overwrite: bool = False,
           on_candidate: Callable[[CandidateResult], None] | None = None, **kw: Any) -> SelectResult:
    """Rank `cfg.models` for `cfg.task` (or keyword fields: `select(models=[...], task=..., n=...)`).

    Unknown models are refused before anything is loaded or written. With `out`, the run folder holds meta.json,
    one result per candidate (a rerun resumes from them) and the report (select.json/.csv, PNG, HTML)."""
    cfg = cfg if cfg is not None else SelectConfig.make(**kw)
    cands = cfg.candidates()
    pool = _Pool(cfg, data_dir)
    rf = None
    if out is not None:
        # `start` enters the key only off its default: runs made before the option resume
        key = {**cfg.model_dump(exclude={"skip_failed"} | ({"start"} if cfg.start == "constant" else set())),
               "data": pool.data.fingerprint(), "resolved": [c.model for c in cands]}
        rf = RunFolder(out, "select", key, overwrite=overwrite)
        rf.open()
    metric = "error" if pool.classification else "mse"
    results = []
    for i, c in enumerate(cands):
        try:
            r = candidate_unit(c, pool, cfg, rf, i, progress)
        except Exception as e:  # a model that loads but cannot give an eNTK: named, the others only with skip_failed
            if not cfg.skip_failed:
                if isinstance(e, ConfigError):
                    raise
                raise KernelError(f"candidate '{c.name}' gives no eNTK: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                                  " (use --skip-failed to rank the others)") from e
            log.warning("candidate %s failed: %s", c.name, e)
            r = CandidateResult(name=c.name, model=c.model, layers=c.layers, setting=c.setting, status="failed",
                                error=str(e))
        results.append(r)
        if on_candidate is not None:
            on_candidate(r)
    res = SelectResult(task=pool.spec.name, task_type=pool.spec.type, metric=metric, n=cfg.n, pool=cfg.pool,
                       target_error=cfg.target_error, candidates=_rank(results),
                       start="model" if pool.model_start else "constant")
    if rf is not None:
        from .report import write_report

        write_report(res, rf)
        if "work" in rf.files and not any(p.is_file() for p in (rf.root / "work").rglob("*")):
            rf.remove("work")  # the kernels' checkpoints remove their own files once complete
        rf.finish(task=res.task, n=cfg.n, pool=cfg.pool, candidates=[c.name for c in res.candidates])
    return res
