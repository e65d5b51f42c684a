"""Stage 5: task vectors on CR, SST-2, RTE and MRPC (paper Section 7.2, Figure 3).

Each task is fine-tuned (full setting) from the same pretrained model into its own checkpoint; then
`ntkft.taskvec.experiment` gives the cosine matrix, task addition with lambda chosen on validation
(normalised accuracy per task) and the kernel-orthogonality score of every pair beside them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field
from tqdm.auto import tqdm

from .._results import ResultModel
from ..errors import DataError, NtkftError
from . import plots
from .context import Context
from .curves import Options as CurveOptions
from .options import RunOptions, TaskList
from .paper import PAPER_TASKVEC_NOTE, label
from .tables import RunView, Section, Table, fmt

if TYPE_CHECKING:
    from ..finetune import FinetuneConfig

log = logging.getLogger(__name__)

FILES = ("finetuned/", "experiment/")
Value = float | int | None
TASKVEC_TASKS = ["cr", "sst2", "rte", "mrpc"]


class Options(RunOptions):
    """The settings of stage 5 (part of ReproConfig); its fine-tunes carve stage 2's `val` hold-out fraction."""

    taskvec_tasks: TaskList = Field(default_factory=lambda: list(TASKVEC_TASKS), min_length=2,
                                    description="tasks of the task-vector experiment (paper Figure 3)")
    taskvec_model: str | None = Field(None, description="model for task vectors (default: the first model)")
    taskvec_n_train: int = Field(256, ge=8, description="training samples per task for the task vectors")
    taskvec_steps: int = Field(100, ge=1, description="fine-tuning steps per task vector")
    taskvec_lr: float = Field(5e-5, gt=0, description="learning rate of the task-vector fine-tunes")
    taskvec_n_test: int = Field(300, ge=10, description="test examples per task for the merged model")
    taskvec_n_val: int = Field(100, ge=4, description="validation rows per task for the lambda choice")
    taskvec_lambdas: list[float] = Field([0.25, 0.5, 0.75, 1.0], min_length=1, description="lambda grid of the "
                                         "task addition (one lambda for all tasks, chosen on validation)")
    taskvec_n_linear: int = Field(64, ge=0, description="test rows per task for the linearised prediction of the "
                                  "merged model (Corollary 2; 0 = off)")
    taskvec_kernel_n: int = Field(24, ge=4, description="samples per task for the kernel-orthogonality scores")


class Finetuned(ResultModel):
    """One task's full fine-tune: test metrics at the kept step and where it stopped."""

    test_best: dict[str, Value]
    best_step: int | None
    stopped_step: int | None
    stop_reason: str | None


class _Given(ResultModel):
    """A part of `ntkft.taskvec`'s own report: the fields this report reads are typed, the rest kept as given."""

    model_config = ConfigDict(extra="allow")


class Cosine(_Given):
    """Cosine similarity of the task vectors."""

    names: list[str]
    matrix: list[list[float]]


class AdditionTest(_Given):
    """One task's test metric: pretrained + head, merged, fine-tuned, and merged / fine-tuned."""

    pretrained: float | None = None
    merged: float | None = None
    finetuned: float | None = None
    normalised: float | None = None


class Addition(_Given):
    """Task addition with lambda chosen on validation, and the merged model against its linearisation."""

    best_lambda: float
    mean_normalised: float
    metrics: dict[str, str]
    test: dict[str, AdditionTest]
    linearised: dict[str, dict[str, Value]] = Field(default_factory=dict)


class PairRow(_Given):
    """Kernel orthogonality of one pair of tasks beside their task vectors' cosine and merged accuracy."""

    task_a: str
    task_b: str
    kernel_ratio: float | None = None
    kernel_ratio_centred: float | None = None
    cosine: float | None = None
    normalised_accuracy: float | None = None


class Orthogonality(_Given):
    """Kernel orthogonality (Assumption 5.1) per pair and its rank correlations."""

    n: int
    rows: list[PairRow]
    spearman: dict[str, float | None] = Field(default_factory=dict)


class TaskVecReport(_Given):
    """`ntkft.taskvec.experiment`'s report, as written."""

    cosine: Cosine
    addition: Addition
    orthogonality: Orthogonality


class TaskVecStage(ResultModel):
    """Stage 5's result: the individual fine-tunes and the experiment's report (or why it was skipped)."""

    model: str
    tasks: list[str]
    finetuned: dict[str, Finetuned] = Field(default_factory=dict)  # task -> test metrics and stops
    report: TaskVecReport | None = None
    skipped: str | None = None


Result = TaskVecStage  # the stage protocol's name (registry.py)


def _fields(ctx: Context) -> dict[str, Any]:
    c = ctx.options(Options)
    return {"model": taskvec_model(ctx), "tasks": c.taskvec_tasks, "n_train": c.taskvec_n_train,
            "steps": c.taskvec_steps, "lr": c.taskvec_lr, "n_test": c.taskvec_n_test, "n_val": c.taskvec_n_val,
            "kernel_n": c.taskvec_kernel_n, "lambdas": c.taskvec_lambdas, "val": ctx.options(CurveOptions).val,
            "n_linear": c.taskvec_n_linear}


def taskvec_model(ctx: Context) -> str:
    """The model the task-vector stage fine-tunes and merges, from the run config."""
    return ctx.options(Options).taskvec_model or ctx.cfg.models[0].name


def finetune_config(ctx: Context, model: str, task: str) -> FinetuneConfig:
    """The FinetuneConfig of one task's full fine-tune (its every field is part of the stage's key)."""
    from ..config import make
    from ..finetune import FinetuneConfig

    c, val = ctx.options(Options), ctx.options(CurveOptions).val  # val: stage 2's hold-out fraction
    # a task vector needs a fine-tuned model: step 0 (tau = 0) is no candidate for early stopping
    return make(FinetuneConfig, model=model, task=task, setting="full", n_train=c.taskvec_n_train, val=val,
                n_test=c.taskvec_n_test, max_length=c.max_length, seed=0, lr=c.taskvec_lr, max_steps=c.taskvec_steps,
                patience=4, save_model=True, eval_at_start=False)


def finetune_task(ctx: Context, model: str, task: str, out: Path) -> Finetuned:
    """Fully fine-tune `model` on `task` into the checkpoint folder `out` (resumes a killed run)."""
    from ..finetune import finetune

    res = finetune(finetune_config(ctx, model, task), out, data_dir=ctx.data_dir, progress=False)
    return Finetuned(test_best=res.test_best, best_step=res.best_step, stopped_step=res.stopped_step,
                     stop_reason=res.stop_reason)


def run(ctx: Context, view: RunView) -> TaskVecStage:
    """Fine-tune each task, then run the task-vector experiment. This stage leans on another package, so a
    failure is reported in the result (and the report) instead of losing the stages before it."""
    try:
        return _run(ctx)
    except NtkftError as e:
        log.warning("stage taskvec failed: %s", e)
        return TaskVecStage(model=taskvec_model(ctx), tasks=list(ctx.options(Options).taskvec_tasks),
                            skipped=f"failed: {e}")


def _run(ctx: Context) -> TaskVecStage:
    c = ctx.options(Options)
    model = taskvec_model(ctx)
    ft = finetune_config(ctx, model, c.taskvec_tasks[0]).model_dump(exclude={"task"})
    key = ctx.stage_key("taskvec", _fields(ctx) | {"weights": ctx.model_fingerprint(model), "finetune": ft,
                                                   "data": {t: ctx.data_fp(t) for t in c.taskvec_tasks}})
    rf = ctx.open_stage("taskvec", key)
    if rf.complete and (rf.root / "taskvec.json").is_file():
        try:
            return TaskVecStage.read(rf.root / "taskvec.json")
        except DataError as e:  # written by an older layout: the experiment runs again on the kept fine-tunes
            log.warning("%s", e)
    res = TaskVecStage(model=model, tasks=list(c.taskvec_tasks))
    try:
        from ..taskvec import experiment
    except ImportError as e:
        res.skipped = f"ntkft.taskvec.experiment is not available ({e})"
        log.warning("stage 5 skipped: %s", res.skipped)
        rf.write_json("taskvec.json", res.to_dict())
        return res
    bar = tqdm(c.taskvec_tasks, desc="stage 5: task vectors (fine-tunes)", disable=not ctx.progress, unit="task")
    paths = {}
    for task in bar:
        bar.set_postfix_str(task)
        paths[task] = rf.path(f"finetuned/{task}")
        res.finetuned[task] = finetune_task(ctx, model, task, paths[task])
    bar.close()
    try:
        rep = experiment(model, {t: str(p) for t, p in paths.items()}, tasks=list(c.taskvec_tasks),
                         out=rf.path("experiment"), lambdas=list(c.taskvec_lambdas), n_val=c.taskvec_n_val,
                         n_test=c.taskvec_n_test, n_kernel=c.taskvec_kernel_n, n_linear=c.taskvec_n_linear,
                         max_length=c.max_length, seed=0,
                         data_dir=ctx.data_dir, progress=ctx.progress)
        res.report = TaskVecReport.from_dict(rep.to_dict(), "ntkft.taskvec.experiment")
    except (NtkftError, TypeError) as e:  # TypeError: the experiment's signature changed under us
        res.skipped = f"task-vector experiment failed: {e}"
        log.warning("stage 5: %s", res.skipped)
    rf.write_json("taskvec.json", res.to_dict())
    if res.skipped is None:
        rf.finish(stage="taskvec")
    return res


def section(view: RunView, figs: dict[str, bytes]) -> Section:
    """The report's task-vector section: fine-tunes, cosines, task addition, linearisation, orthogonality."""
    sec = Section("Task vectors (paper Section 7.2, Figure 3)")
    d = view.of(TaskVecStage)
    if d is None:
        sec.text.append("This stage has not run.")
        return sec
    if d.skipped:
        sec.text.append(f"This stage did not complete: {d.skipped}.")
    if d.finetuned:
        t = Table("taskvec-finetuned", f"individually fine-tuned models ({d.model}, full setting)",
                  "taskvec/taskvec.json: finetuned", ["task", "test accuracy", "test F1", "best step", "stopped"])
        for task, r in d.finetuned.items():
            t.rows.append([label(task), r.test_best.get("accuracy"), r.test_best.get("f1"), r.best_step,
                           r.stopped_step])
        sec.tables.append(t)
    rep = d.report
    if rep is None:
        return sec
    names = rep.cosine.names
    t = Table("taskvec-cosine", "cosine similarity of task vectors", "taskvec/taskvec.json: report.cosine.matrix",
              ["task"] + [label(n) for n in names])
    for i, n in enumerate(names):
        t.rows.append([label(n)] + list(rep.cosine.matrix[i]))
    sec.tables.append(t)
    add = rep.addition
    a = Table("taskvec-addition", f"task addition, lambda = {add.best_lambda:g} chosen on validation "
              f"(mean normalised {add.mean_normalised:.3f})", "taskvec/taskvec.json: report.addition.test",
              ["task", "metric", "pretrained + head", "merged", "fine-tuned", "normalised", "paper normalised"],
              note=PAPER_TASKVEC_NOTE)
    for task, v in add.test.items():
        a.rows.append([label(task), add.metrics.get(task), v.pretrained, v.merged, v.finetuned, v.normalised, None])
    sec.tables.append(a)
    if add.linearised:
        li = Table("taskvec-linearised", "the merged model against its linearisation f_PT + <lambda sum tau, grad f_PT> "
                   "(Corollary 2)", "taskvec/taskvec.json: report.addition.linearised",
                   ["task", "rows", "relative error", "prediction agreement", "metric merged", "metric linearised"],
                   note="relative error = ||f_lin - f_MT|| / ||f_MT - f_PT||: 0 when the first-order term explains the "
                        "merge exactly, 1 when it explains nothing.")
        for task, lv in add.linearised.items():
            m = add.metrics.get(task, "")
            li.rows.append([label(task), lv.get("n"), lv.get("rel_error"), lv.get("agreement"), lv.get(f"{m}_merged"),
                            lv.get(f"{m}_linearised")])
        sec.tables.append(li)
    orth = rep.orthogonality
    o = Table("taskvec-orthogonality", f"kernel orthogonality (Assumption 5.1) per pair, eNTK on {orth.n} samples "
              "per task", "taskvec/taskvec.json: report.orthogonality.rows",
              ["pair", "kernel ratio", "kernel ratio (centred)", "cosine", "pair normalised accuracy"],
              note="kernel ratio = ||K_12||_F / sqrt(||K_11||_F ||K_22||_F); 0 = orthogonal.")
    for pair in orth.rows:
        o.rows.append([f"{label(pair.task_a)}-{label(pair.task_b)}", pair.kernel_ratio, pair.kernel_ratio_centred,
                       pair.cosine, pair.normalised_accuracy])
    sec.tables.append(o)
    if orth.spearman:
        sec.text.append("Spearman over pairs: " + ", ".join(f"{k} {fmt(v)}" for k, v in orth.spearman.items()) +
                        " (taskvec/taskvec.json: report.orthogonality.spearman).")
    name = "taskvec.png"
    figs[name] = plots.taskvec_figure(names, rep.cosine.matrix,
                                      {t: v.normalised for t, v in add.test.items() if v.normalised is not None},
                                      f"task vectors, {d.model}")
    sec.figures.append((name, "Task-vector cosine (left, paper Figure 3 left) and the merged model's normalised "
                              "accuracy (right, paper Figure 3 right)."))
    return sec
