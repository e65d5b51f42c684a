"""The task-vector commands as functions: cosine, add, negate, disentangle, orthogonality, and `experiment`
(the paper's Figure 3 in one call). Each writes a run folder (JSON + CSV + PNG + meta.json) and caches every
evaluation (per lambda, per coefficient pair, per kernel block) inside it, so an interrupted run resumes."""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .._runs import RunFolder, digest, file_digest
from ..config import make
from ..errors import ConfigError
from ..kernel._common import trim
from ..tasks import get_spec, load_task, subsample
from . import plots
from .config import DEFAULT_LAMBDAS, AddConfig, CosineConfig, DisentangleConfig, NegateConfig, OrthogonalityConfig
from .evaluate import (
    HIGHER_IS_BETTER,
    Encoded,
    Session,
    TaskEval,
    default_metric,
    encode_rows,
    error_of,
    test_rows,
    validation_rows,
)
from .measures import disentanglement, kernel_blocks, linearised_vs_merged, orthogonality_scores
from .merge import safe_name
from .sources import Checkpoint, Head, Pretrained, open_checkpoint, parse_checkpoint_arg
from .vector import TaskVector, cosine_from_gram, cosine_matrix, gram, task_vectors, total

log = logging.getLogger(__name__)
NAN = float("nan")


# ---------------------------------------------------------------- run-folder plumbing


class _Cache:
    """JSON results and tensors kept inside a run folder (or nowhere when out is None)."""

    def __init__(self, rf: RunFolder | None) -> None:
        self.rf = rf

    def get(self, name: str) -> Any:
        if self.rf is None:
            return None
        p = self.rf.root / name
        if name.split("/")[0] not in self.rf.files or not p.is_file():
            return None
        return json.loads(p.read_text())

    def done(self, name: str) -> Any:
        """The final result of a run that already completed (None otherwise)."""
        return self.get(name) if self.rf is not None and self.rf.complete else None

    def put(self, name: str, obj: Any) -> Any:
        if self.rf is not None:
            self.rf.write_json(name, obj)
        return obj

    def tensor(self, name: str, fn: Callable[..., torch.Tensor]) -> torch.Tensor:
        if self.rf is not None and name.split("/")[0] in self.rf.files and (self.rf.root / name).is_file():
            from safetensors.torch import load_file

            return load_file(str(self.rf.root / name))["t"]
        t = fn()
        if self.rf is not None:
            self.rf.save_tensors(name, {"t": t})
        return t


def checkpoint_digest(ck: Checkpoint) -> str:
    """sha256 over the checkpoint's weight files, head and ntkft.json (what the task vector is made of)."""
    files = sorted({m.file for m in ck.files.meta.values()})
    files += [p for p in ([ck.head.file] if ck.head else []) + [ck.dir / "ntkft.json"] if p.is_file()]
    return digest([[f.name, file_digest(f)] for f in files])


def _open_run(out: str | Path | None, kind: str, key: dict, overwrite: bool) -> tuple[RunFolder | None, _Cache]:
    if out is None:
        return None, _Cache(None)
    rf = RunFolder(out, kind, key, overwrite)
    if rf.open():
        log.info("%s: resuming (cached evaluations are reused)", out)
    return rf, _Cache(rf)


def _csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _lam_name(lam: float) -> str:
    return f"{lam:.4f}"


def _kind(vectors: list[TaskVector]) -> str | None:
    kinds = {str(ck.info["kind"]) for v in vectors for ck in v.checkpoints if ck.info.get("kind")}
    if len(kinds) > 1:
        raise ConfigError(f"finetuned: checkpoints disagree on the model kind ({', '.join(sorted(kinds))})")
    return kinds.pop() if kinds else None


def _session(cfg: Any, base: Pretrained, vectors: list[TaskVector], data_dir: str | None, progress: bool) -> Session:
    return Session(base, _kind(vectors), cfg.device, cfg.batch_size, cfg.max_length, cfg.seed, data_dir, progress)


def _task_evals(s: Session, vectors: list[TaskVector], cfg: Any) -> list[TaskEval]:
    tasks = [s.task(v.checkpoints[0], cfg.n_val, cfg.n_test, cfg.metric) for v in vectors]
    metrics = {t.metric for t in tasks}
    if len(metrics) > 1:
        log.info("tasks are compared on different metrics: %s", ", ".join(f"{t.name}:{t.metric}" for t in tasks))
    return tasks


def _run_key(cfg: Any, s: Session, vectors: list[TaskVector], tasks: list[TaskEval]) -> dict[str, Any]:
    return {"config": cfg.model_dump(exclude={"device"}), "pretrained": s.weights_fingerprint(),
            "checkpoints": {v.name: checkpoint_digest(v.checkpoints[0]) for v in vectors},
            "data": {t.name: {"val": t.val.fingerprint, "test": t.test.fingerprint} for t in tasks}}


def _better(metric: str) -> bool:
    return HIGHER_IS_BETTER.get(metric, True)


def _normalised(merged: float, finetuned: float) -> float:
    """merged / fine-tuned (NaN when the fine-tuned value is 0 or not finite)."""
    return merged / finetuned if finetuned != 0.0 and math.isfinite(finetuned) else float("nan")


# ---------------------------------------------------------------- results


@dataclass
class CosineResult:
    """Pairwise cosine similarity of task vectors (Figure 3 left)."""

    names: list[str]
    matrix: list[list[float]]
    norms: list[float]
    vectors: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[dict[str, Any]]:
        return [{"task": n, **{m: self.matrix[i][j] for j, m in enumerate(self.names)}} for i, n in enumerate(self.names)]


@dataclass
class AddResult:
    """Task addition: the lambda grid on validation, the chosen lambda, and test metrics per task."""

    tasks: list[str]
    metrics: dict[str, str]
    lambdas: list[float]
    val: list[dict[str, Any]]
    best_lambda: float
    test: dict[str, dict[str, float]]
    mean_normalised: float
    linearised: dict[str, dict[str, float]] = field(default_factory=dict)
    heads: dict[str, Any] = field(default_factory=dict)
    merged_dir: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def test_rows(self) -> list[dict[str, Any]]:
        return [{"task": t, "metric": self.metrics[t], **v} for t, v in self.test.items()]


@dataclass
class NegateResult:
    """Task negation: lambda grid (target and control on validation), the chosen lambda, test metrics, Corollary 1."""

    target: str
    control: str
    metrics: dict[str, str]
    threshold: float
    lambdas: list[float]
    val: list[dict[str, Any]]
    best_lambda: float
    test: dict[str, dict[str, float]]
    negation_gap: dict[str, Any]
    control_kept: float
    merged_dir: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DisentangleResult:
    """xi(a1, a2) on the coefficient grid, and each task's share."""

    tasks: list[str]
    coefficients: list[float]
    xi: list[list[float]]
    parts: dict[str, list[list[float]]]
    dist: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for r, a1 in enumerate(self.coefficients):
            for c, a2 in enumerate(self.coefficients):
                out.append({"a1": a1, "a2": a2, "xi": self.xi[r][c],
                            **{f"xi_{t}": self.parts[t][r][c] for t in self.tasks}})
        return out


@dataclass
class OrthogonalityResult:
    """Assumption 5.1 per task pair: cross-block ratios of the pretrained eNTK, beside cosine and pair accuracy."""

    tasks: list[str]
    n: int
    rows: list[dict[str, Any]]
    spearman: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TaskVecReport:
    """Figure 3 of the paper and the kernel condition beside it."""

    cosine: CosineResult
    addition: AddResult
    orthogonality: OrthogonalityResult

    def to_dict(self) -> dict[str, Any]:
        return {"cosine": self.cosine.to_dict(), "addition": self.addition.to_dict(),
                "orthogonality": self.orthogonality.to_dict()}


# ---------------------------------------------------------------- cosine


def run_cosine(cfg: CosineConfig, out: str | Path | None = None, overwrite: bool = False,
               progress: bool = True) -> CosineResult:
    """Cosine matrix of the task vectors: cosine.json, cosine.csv, cosine.png."""
    base = Pretrained.open(cfg.pretrained)
    vectors = task_vectors(base, cfg.finetuned)
    key = {"config": cfg.model_dump(exclude={"device", "batch_size", "max_length", "seed"}),
           "checkpoints": {v.name: checkpoint_digest(v.checkpoints[0]) for v in vectors},
           "pretrained": [[f.name, file_digest(f)] for f in sorted({m.file for m in base.files.meta.values()})]}
    rf, cache = _open_run(out, "taskvec-cosine", key, overwrite)
    got = cache.get("cosine.json")
    if got is not None:
        return CosineResult(**got)
    g = gram(vectors, progress=progress)
    c = cosine_from_gram(g)
    norms = g.diagonal().clamp(min=0).sqrt().tolist()
    res = CosineResult([v.name for v in vectors], c.tolist(), norms, [v.report() for v in vectors])
    if rf is not None:
        rf.write_text("cosine.csv", _csv(res.rows()))
        plots.heatmap(res.matrix, res.names, res.names, rf.path("cosine.png"), "cosine similarity of task vectors",
                      "cosine", vmin=min(0.0, float(c.nan_to_num(0).min())), vmax=1.0)
        cache.put("cosine.json", res.to_dict())
        rf.finish(command="taskvec cosine", pretrained=cfg.pretrained, tasks=res.names)
    return res


# ---------------------------------------------------------------- addition


def _finetuned_metrics(s: Session, vectors: list[TaskVector], tasks: list[TaskEval],
                       cache: _Cache) -> dict[str, dict[str, dict[str, float]]]:
    """Each fine-tuned model's own metrics on its task (validation and test), computed once per run folder."""
    name = "evals/finetuned.json"
    got = cache.get(name) or {}
    for v, t in zip(vectors, tasks):
        if t.name not in got:
            got[t.name] = s.finetuned(v.checkpoints[0], t)
            cache.put(name, got)
    return got


def _eval_at(s: Session, tv: TaskVector | None, lam: float, tasks: list[TaskEval], split: str, cache: _Cache,
             name: str) -> dict[str, dict[str, float]]:
    """Metrics of theta_PT + lam * tau on each task's `split` rows with the task's head (cached under `name`)."""
    got = cache.get(name)
    if got is not None and all(t.name in got for t in tasks):
        return got
    s.set_weights(tv, lam)
    return cache.put(name, {t.name: s.evaluate(t, split)[1] for t in tasks})


def _addition_search(s: Session, vectors: list[TaskVector], tasks: list[TaskEval], lambdas: list[float],
                     cache: _Cache, prefix: str, progress: bool) -> tuple[list[dict], float, dict, dict]:
    """(validation rows, best lambda, test metrics per task, fine-tuned metrics) of theta_PT + lam sum tau."""
    ft = _finetuned_metrics(s, vectors, tasks, cache)
    tv = total(vectors)
    rows = []
    for lam in tqdm(lambdas, desc="lambda grid (validation)", disable=not progress):
        m = _eval_at(s, tv, lam, tasks, "val", cache, f"{prefix}/val/lambda-{_lam_name(lam)}.json")
        row: dict[str, Any] = {"lambda": lam}
        norms = []
        for t in tasks:
            v, f = m[t.name].get(t.metric, float("nan")), ft[t.name]["val"].get(t.metric, float("nan"))
            row[t.name] = v
            row[f"{t.name}_normalised"] = _normalised(v, f) if _better(t.metric) else _normalised(f, v)
            norms.append(row[f"{t.name}_normalised"])
        row["mean_normalised"] = sum(norms) / len(norms)
        rows.append(row)
    finite = [r for r in rows if math.isfinite(r["mean_normalised"])]
    if not finite:
        raise ConfigError("no lambda of the grid gave finite validation metrics")
    best = max(finite, key=lambda r: (r["mean_normalised"], -r["lambda"]))["lambda"]
    merged = _eval_at(s, tv, best, tasks, "test", cache, f"{prefix}/test/lambda-{_lam_name(best)}.json")
    pre = _eval_at(s, None, 0.0, tasks, "test", cache, f"{prefix}/test/lambda-{_lam_name(0.0)}.json")
    test = {}
    for t in tasks:
        mv, fv = merged[t.name].get(t.metric, float("nan")), ft[t.name]["test"].get(t.metric, float("nan"))
        test[t.name] = {"pretrained": pre[t.name].get(t.metric, float("nan")), "merged": mv, "finetuned": fv,
                        "normalised": _normalised(mv, fv) if _better(t.metric) else _normalised(fv, mv)}
    return rows, best, test, ft


def run_add(cfg: AddConfig, out: str | Path | None = None, overwrite: bool = False, data_dir: str | None = None,
            progress: bool = True) -> AddResult:
    """Task addition with lambda chosen on validation; normalised accuracy per task on test (Figure 3 right)."""
    base = Pretrained.open(cfg.pretrained)
    vectors = task_vectors(base, cfg.finetuned)
    s = _session(cfg, base, vectors, data_dir, progress)
    tasks = _task_evals(s, vectors, cfg)
    rf, cache = _open_run(out, "taskvec-add", _run_key(cfg, s, vectors, tasks), overwrite)
    if (done := cache.done("addition.json")) is not None:
        return AddResult(**done)
    rows, best, test, _ = _addition_search(s, vectors, tasks, cfg.lambdas, cache, "evals", progress)
    tv = total(vectors)
    lin: dict[str, dict[str, float]] = {}
    if cfg.n_linear:
        lin = cache.get("evals/linearised.json") or {}
        for t in tasks:
            if t.name not in lin:
                lin[t.name] = linearised_vs_merged(s, tv, best, t, t.test.head_rows(cfg.n_linear))
                cache.put("evals/linearised.json", lin)
    mean = sum(v["normalised"] for v in test.values()) / len(test)
    notes = [f"{t.name}: {n}" for t in tasks for n in t.notes]
    res = AddResult([t.name for t in tasks], {t.name: t.metric for t in tasks}, cfg.lambdas, rows, best, test, mean,
                    lin, tv.report()["terms"], notes=notes)
    if rf is not None:
        if cfg.save_model:
            from .merge import write_merged

            write_merged(tv, best, rf.path("merged"), meta={"operation": "add"},
                         max_shard_bytes=int(cfg.max_shard_mb * 2**20), progress=progress)
            res.merged_dir = str(rf.root / "merged")
        rf.write_text("lambda_grid.csv", _csv(rows))
        rf.write_text("addition.csv", _csv(res.test_rows()))
        plots.lambda_curves(cfg.lambdas, {t.name: [r[f"{t.name}_normalised"] for r in rows] for t in tasks}
                            | {"mean": [r["mean_normalised"] for r in rows]}, rf.path("lambda_grid.png"),
                            "normalised validation metric", "task addition: lambda on validation", chosen=best,
                            hline=1.0)
        plots.bars(res.tasks, {"pretrained + head": [test[t]["pretrained"] for t in res.tasks],
                               f"merged (lambda={best:g})": [test[t]["merged"] for t in res.tasks],
                               "fine-tuned": [test[t]["finetuned"] for t in res.tasks]},
                   rf.path("addition.png"), "test metric", f"task addition, mean normalised {mean:.3f}")
        rf.write_json("addition.json", res.to_dict())
        rf.finish(command="taskvec add", pretrained=cfg.pretrained, tasks=res.tasks, best_lambda=best,
                  mean_normalised=mean)
    return res


# ---------------------------------------------------------------- negation


def _control(s: Session, cfg: NegateConfig, base: Pretrained) -> tuple[TaskEval, str]:
    """The control task with its head: a checkpoint's own head, or a ridge probe fit on theta_PT's features."""
    _, path = parse_checkpoint_arg(cfg.control)
    if Path(path).expanduser().exists() or "/" in path or "\\" in path:
        ck = open_checkpoint(cfg.control, base)
        return s.task(ck, cfg.n_val, cfg.n_test, cfg.metric), f"head of {ck.dir}"
    from ..finetune import probe_closed_form

    spec = get_spec(cfg.control)
    val, where = validation_rows(spec, None, cfg.n_val, cfg.seed, s.data_dir)
    test = test_rows(spec, cfg.n_test, cfg.seed, s.data_dir)
    train = load_task(spec, "train", s.data_dir)
    train = subsample(train, min(cfg.n_probe, len(train)), seed=cfg.seed + 1)
    enc = encode_rows(s.loaded, train, cfg.max_length)
    s.set_weights(None, 0.0)
    c = 1 if spec.type == "regression" else len(spec.labels or [])
    probe = Head(spec.name, torch.zeros(c, s.loaded.hidden_size), torch.zeros(c), Path("probe"), {"task": spec.name})
    feats = _features(s, probe, enc)
    y = enc.y.float() if c == 1 else torch.nn.functional.one_hot(enc.y.long(), c).float()
    w, b = probe_closed_form(feats, y, ridge=1e-3)
    head = Head(spec.name, w.float(), b.float(), Path("probe"), {"task": spec.name, "probe_rows": len(train)})
    t = TaskEval(spec.name, spec, head, encode_rows(s.loaded, val, cfg.max_length),
                 encode_rows(s.loaded, test, cfg.max_length), default_metric(spec, cfg.metric),
                 [f"validation rows: {where}"])
    return t, f"ridge probe on theta_PT features ({len(train)} train rows)"


@torch.no_grad()
def _features(s: Session, head: Head, enc: Encoded) -> torch.Tensor:
    """Pooled backbone features h(x) of the current weights (float64), for fitting a probe head."""
    r = s.readout(head)
    out = []
    for i in range(0, len(enc), s.batch_size):
        ids, mask = trim(enc.ids[i:i + s.batch_size], enc.mask[i:i + s.batch_size])
        out.append(r.features(ids.to(s.device), mask.to(s.device)).double().cpu())
    return torch.cat(out)


def run_negate(cfg: NegateConfig, out: str | Path | None = None, overwrite: bool = False, data_dir: str | None = None,
               progress: bool = True) -> NegateResult:
    """theta_PT - lam tau_target: the lambda that lowers the target most while the control keeps `threshold` of its
    pretrained metric (validation); test metrics and the negation gap of Corollary 1."""
    base = Pretrained.open(cfg.pretrained)
    (tv,) = task_vectors(base, [cfg.target])
    s = _session(cfg, base, [tv], data_dir, progress)
    target = s.task(tv.checkpoints[0], cfg.n_val, cfg.n_test, cfg.metric)
    control, control_head = _control(s, cfg, base)
    if control.spec.name == target.spec.name:
        raise ConfigError(f"control: the control task must differ from the target task '{target.spec.name}'")
    key = _run_key(cfg, s, [tv], [target, control])
    key["control_head"] = digest([control.head.weight.tolist(), control.head.bias.tolist()])
    rf, cache = _open_run(out, "taskvec-negate", key, overwrite)
    if (done := cache.done("negation.json")) is not None:
        return NegateResult(**done)
    ft = _finetuned_metrics(s, [tv], [target], cache)
    neg = -tv
    both = [target, control]
    rows = []
    ctrl0 = NAN
    for lam in tqdm(cfg.lambdas if 0.0 in cfg.lambdas else [0.0, *cfg.lambdas], desc="lambda grid (validation)",
                    disable=not progress):
        m = _eval_at(s, neg, lam, both, "val", cache, f"evals/val/lambda-{_lam_name(lam)}.json")
        tval, cval = m[target.name].get(target.metric, NAN), m[control.name].get(control.metric, NAN)
        if lam == 0.0:
            ctrl0 = cval
        rows.append({"lambda": lam, "target": tval, "target_loss": m[target.name]["loss"], "control": cval})
    for r in rows:
        r["control_kept"] = _normalised(r["control"], ctrl0) if _better(control.metric) else _normalised(ctrl0, r["control"])
        r["allowed"] = bool(r["control_kept"] >= cfg.threshold)
    ok = [r for r in rows if r["allowed"] and r["lambda"] in cfg.lambdas] or [r for r in rows if r["lambda"] == 0.0]
    sign = 1.0 if _better(target.metric) else -1.0
    # lowest target metric; ties (e.g. accuracy pinned at a class prior) go to the larger target loss, then smaller lambda
    best = min(ok, key=lambda r: (sign * r["target"], -r["target_loss"], r["lambda"]))["lambda"]
    negm = _eval_at(s, neg, best, both, "test", cache, f"evals/test/lambda-{_lam_name(best)}.json")
    prem = _eval_at(s, None, 0.0, both, "test", cache, f"evals/test/lambda-{_lam_name(0.0)}.json")
    ftm = ft[target.name]["test"]
    err_name, err_neg = error_of(target.type, negm[target.name])
    _, err_ft = error_of(target.type, ftm)
    gap = {"error": err_name, "negated": err_neg, "finetuned": err_ft, "gap": err_neg - err_ft,
           "loss_negated": negm[target.name]["loss"], "loss_finetuned": ftm["loss"],
           "loss_gap": negm[target.name]["loss"] - ftm["loss"]}
    cm = control.metric
    kept = _normalised(negm[control.name][cm], prem[control.name][cm]) if _better(cm) else \
        _normalised(prem[control.name][cm], negm[control.name][cm])
    test = {"target": {"finetuned": ftm.get(target.metric, NAN), "pretrained": prem[target.name].get(target.metric, NAN),
                       "negated": negm[target.name].get(target.metric, NAN)},
            "control": {"pretrained": prem[control.name].get(cm, NAN), "negated": negm[control.name].get(cm, NAN)}}
    notes = [f"control head: {control_head}"] + [f"{t.name}: {n}" for t in both for n in t.notes]
    res = NegateResult(target.name, control.name, {"target": target.metric, "control": cm}, cfg.threshold,
                       cfg.lambdas, rows, best, test, gap, kept, notes=notes)
    if rf is not None:
        if cfg.save_model:
            from .merge import write_merged

            write_merged(neg, best, rf.path("merged"), meta={"operation": "negate"},
                         max_shard_bytes=int(cfg.max_shard_mb * 2**20), progress=progress)
            res.merged_dir = str(rf.root / "merged")
        rf.write_text("lambda_grid.csv", _csv(rows))
        plots.lambda_curves([r["lambda"] for r in rows], {f"target {target.name} ({target.metric})": [r["target"] for r in rows],
                                                         f"control {control.name} ({cm})": [r["control"] for r in rows]},
                            rf.path("lambda_grid.png"), "validation metric", "task negation theta_PT - lambda tau",
                            chosen=best, hline=ctrl0 * cfg.threshold)
        rf.write_json("negation.json", res.to_dict())
        rf.finish(command="taskvec negate", pretrained=cfg.pretrained, target=target.name, control=control.name,
                  best_lambda=best, negation_gap=gap["gap"])
    return res


# ---------------------------------------------------------------- disentanglement


def run_disentangle(cfg: DisentangleConfig, out: str | Path | None = None, overwrite: bool = False,
                    data_dir: str | None = None, progress: bool = True) -> DisentangleResult:
    """xi(a1, a2) on the coefficient grid (heatmap), test rows of both tasks with each task's head."""
    base = Pretrained.open(cfg.pretrained)
    vectors = task_vectors(base, cfg.finetuned)
    s = _session(cfg, base, vectors, data_dir, progress)
    tasks = [s.task(v.checkpoints[0], 2, cfg.n, None) for v in vectors]
    rf, cache = _open_run(out, "taskvec-disentangle", _run_key(cfg, s, vectors, tasks), overwrite)
    got = cache.get("disentangle.json")
    if got is not None:
        return DisentangleResult(**got)
    d = disentanglement(s, vectors, tasks, cfg.coefficients, progress)
    res = DisentangleResult([t.name for t in tasks], cfg.coefficients, d["xi"], d["parts"],
                            {t.name: "prediction disagreement" if t.type == "classification" else "squared difference"
                             for t in tasks})
    if rf is not None:
        rf.write_text("disentangle.csv", _csv(res.rows()))
        labels = [f"{a:g}" for a in cfg.coefficients]
        plots.heatmap(res.xi, labels, labels, rf.path("disentangle.png"), "weight-disentanglement error xi(a1, a2)",
                      "xi", cmap="magma_r", xlabel=f"a2 ({res.tasks[1]})", ylabel=f"a1 ({res.tasks[0]})")
        cache.put("disentangle.json", res.to_dict())
        rf.finish(command="taskvec disentangle", pretrained=cfg.pretrained, tasks=res.tasks)
    return res


# ---------------------------------------------------------------- kernel orthogonality


def _spearman(xs: list[float], ys: list[float]) -> float:
    pts = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    if len(pts) < 3 or len({p[0] for p in pts}) < 2 or len({p[1] for p in pts}) < 2:
        return float("nan")  # fewer than three pairs, or a constant column: no rank correlation
    from scipy.stats import spearmanr

    return float(spearmanr([p[0] for p in pts], [p[1] for p in pts])[0])


def run_orthogonality(cfg: OrthogonalityConfig, out: str | Path | None = None, overwrite: bool = False,
                      data_dir: str | None = None, progress: bool = True) -> OrthogonalityResult:
    """Per pair of tasks: ||K_12||_F / sqrt(||K_11||_F ||K_22||_F) of the pretrained eNTK (raw and centred), next to
    the task-vector cosine and the pair's normalised accuracy when fine-tuned checkpoints are given."""
    from ..models import fingerprint
    from ..pipeline import build_readout
    from ..tasks import encode

    base = Pretrained.open(cfg.pretrained) if cfg.finetuned else None
    vectors = task_vectors(base, cfg.finetuned) if base is not None else []
    by_task = {v.checkpoints[0].task or v.name: v for v in vectors}
    names = list(dict.fromkeys(cfg.tasks or [v.checkpoints[0].task or v.name for v in vectors]))
    if len(names) < 2:
        raise ConfigError("tasks: orthogonality compares at least two tasks (give tasks or two checkpoints)")
    specs = {t: get_spec(t) for t in names}
    loaded, f = build_readout(str(base.dir) if base is not None else cfg.pretrained, layers=cfg.layers, seed=cfg.seed,
                              sigma=cfg.sigma)
    rows_x = {}
    for t, sp in specs.items():
        train = load_task(sp, "train", data_dir)
        rows_x[t] = subsample(train, min(cfg.n, len(train)), seed=cfg.seed)
    xs = {t: encode(loaded.tokenizer, loaded.kind, d, max_length=cfg.max_length) for t, d in rows_x.items()}
    key = {"config": cfg.model_dump(exclude={"device"}), "pretrained": fingerprint(f),
           "data": {t: d.fingerprint() for t, d in rows_x.items()},
           "checkpoints": {v.name: checkpoint_digest(v.checkpoints[0]) for v in vectors}}
    rf, cache = _open_run(out, "taskvec-orthogonality", key, overwrite)
    if (done := cache.done("orthogonality.json")) is not None:
        return OrthogonalityResult(**done)
    diag = {t: cache.tensor(f"kernels/K_{safe_name(t)}.safetensors",
                            lambda t=t: kernel_blocks(f, xs[t], None, cfg.params, cfg.method, progress))
            for t in names}
    cos = None
    if vectors:
        missing = [t for t in names if t not in by_task]
        if missing:
            raise ConfigError(f"tasks: no fine-tuned checkpoint for {', '.join(missing)} among finetuned")
        sel = [by_task[t] for t in names]
        cos = cache.get("cosine.json") or cache.put("cosine.json", cosine_matrix(sel, progress=progress).tolist())
    s, evals, pair_cache = None, {}, None
    if vectors and cfg.pair_accuracy:
        s = _session(cfg, base, [by_task[t] for t in names], data_dir, progress)  # type: ignore[arg-type]
        evals = {t: s.task(by_task[t].checkpoints[0], cfg.n_val, cfg.n_test, cfg.metric) for t in names}
        pair_cache = cache
    rows = []
    for i, j in tqdm(list(itertools.combinations(range(len(names)), 2)), desc="task pairs", disable=not progress):
        a, b = names[i], names[j]
        k12 = cache.tensor(f"kernels/K_{safe_name(a)}__{safe_name(b)}.safetensors",
                           lambda a=a, b=b: kernel_blocks(f, xs[a], xs[b], cfg.params, cfg.method, progress))
        row: dict[str, Any] = {"task_a": a, "task_b": b, **orthogonality_scores(k12, diag[a], diag[b])}
        if cos is not None:
            row["cosine"] = cos[i][j]
        if s is not None:
            pv = [by_task[a], by_task[b]]
            _, best, test, _ = _addition_search(s, pv, [evals[a], evals[b]], cfg.lambdas, pair_cache,  # type: ignore[arg-type]
                                                f"pairs/{safe_name(a)}__{safe_name(b)}", progress=False)
            row["normalised_accuracy"] = sum(v["normalised"] for v in test.values()) / 2
            row["lambda"] = best
            row.update({f"normalised_{t}": v["normalised"] for t, v in test.items()})
        rows.append(row)
    spear = {}
    if any("normalised_accuracy" in r for r in rows):
        acc = [r["normalised_accuracy"] for r in rows]
        spear = {"kernel_ratio_vs_accuracy": _spearman([r["kernel_ratio"] for r in rows], acc),
                 "kernel_ratio_centred_vs_accuracy": _spearman([r["kernel_ratio_centred"] for r in rows], acc),
                 "cosine_vs_accuracy": _spearman([r.get("cosine", float("nan")) for r in rows], acc)}
    notes = ["kernel: unnormalised eNTK of theta_PT with a seeded random scalar head; samples from each task's train "
             "split; centred = each task's mean gradient removed (H K H per block)"]
    res = OrthogonalityResult(names, cfg.n, rows, spear, notes)
    if rf is not None:
        rf.write_text("orthogonality.csv", _csv(rows))
        mat = [[1.0 if i == j else float("nan") for j in range(len(names))] for i in range(len(names))]
        matc = [r[:] for r in mat]
        for r in rows:
            i, j = names.index(r["task_a"]), names.index(r["task_b"])
            mat[i][j] = mat[j][i] = r["kernel_ratio"]
            matc[i][j] = matc[j][i] = r["kernel_ratio_centred"]
        plots.heatmap(mat, names, names, rf.path("orthogonality.png"), "||K_12|| / sqrt(||K_11|| ||K_22||)", "ratio",
                      vmin=0.0, vmax=1.0)
        plots.heatmap(matc, names, names, rf.path("orthogonality_centred.png"), "centred kernels", "ratio",
                      vmin=0.0, vmax=1.0)
        if spear:
            plots.scatter([r["kernel_ratio_centred"] for r in rows], [r["normalised_accuracy"] for r in rows],
                          [f"{r['task_a']}+{r['task_b']}" for r in rows], rf.path("orthogonality_vs_accuracy.png"),
                          "centred kernel cross ratio", "pair normalised accuracy", "does the kernel predict merging?")
        rf.write_json("orthogonality.json", res.to_dict())
        rf.finish(command="taskvec orthogonality", pretrained=cfg.pretrained, tasks=names)
    return res


# ---------------------------------------------------------------- the paper's Figure 3 in one call


def experiment(pretrained: str, finetuned: dict[str, str | Path], tasks: list[str] | None = None,
               out: str | Path | None = None, lambdas: list[float] | None = None, n_val: int = 200, n_test: int = 500,
               n_kernel: int = 32, pair_accuracy: bool = True, n_linear: int = 64, max_length: int = 64,
               seed: int = 0, save_model: bool = False, overwrite: bool = False, data_dir: str | None = None,
               progress: bool = True) -> TaskVecReport:
    """Cosine matrix, task addition (normalised accuracy per task) and kernel orthogonality per pair for the
    checkpoints `finetuned` (task -> run folder or HF dir) of `pretrained`; `out` gets one sub-folder each."""
    names = tasks or list(finetuned)
    if len(names) < 2:
        raise ConfigError("tasks: the experiment needs at least two tasks")
    unknown = [t for t in names if t not in finetuned]
    if unknown:
        raise ConfigError(f"tasks: no checkpoint for {', '.join(unknown)} in finetuned")
    cks = [f"{t}={finetuned[t]}" for t in names]
    grid = list(lambdas) if lambdas is not None else list(DEFAULT_LAMBDAS)
    common = {"pretrained": pretrained, "max_length": max_length, "seed": seed}
    sub = (lambda name: Path(out) / name) if out is not None else (lambda name: None)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
    cos = run_cosine(make(CosineConfig, finetuned=cks, **common), sub("cosine"), overwrite, progress)
    add = run_add(make(AddConfig, finetuned=cks, lambdas=grid, n_val=n_val, n_test=n_test, n_linear=n_linear,
                       save_model=save_model, **common), sub("add"), overwrite, data_dir, progress)
    orth = run_orthogonality(make(OrthogonalityConfig, finetuned=cks, tasks=names, n=n_kernel, lambdas=grid,
                                  n_val=n_val, n_test=n_test, pair_accuracy=pair_accuracy, **common),
                             sub("orthogonality"), overwrite, data_dir, progress)
    return TaskVecReport(cos, add, orth)

