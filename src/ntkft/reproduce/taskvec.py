"""Stage 5: task vectors on CR, SST-2, RTE and MRPC (paper Section 7.2, Figure 3).

Each task is fine-tuned (full setting) from the same pretrained model into its own checkpoint; then
`ntkft.taskvec.experiment` gives the cosine matrix, task addition with lambda chosen on validation
(normalised accuracy per task) and the kernel-orthogonality score of every pair beside them."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from ..errors import NtkftError
from .context import Context

if TYPE_CHECKING:
    from ..finetune import FinetuneConfig

log = logging.getLogger(__name__)


@dataclass
class TaskVecStage:
    """Stage 5's result: the individual fine-tunes and the experiment's report (or why it was skipped)."""

    model: str
    tasks: list[str]
    finetuned: dict[str, dict] = field(default_factory=dict)  # task -> test metrics and stops
    report: dict | None = None  # TaskVecReport.to_dict()
    skipped: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _fields(ctx: Context) -> dict:
    c = ctx.cfg
    return {"model": taskvec_model(ctx), "tasks": c.taskvec_tasks, "n_train": c.taskvec_n_train,
            "steps": c.taskvec_steps, "lr": c.taskvec_lr, "n_test": c.taskvec_n_test, "n_val": c.taskvec_n_val,
            "kernel_n": c.taskvec_kernel_n, "lambdas": c.taskvec_lambdas, "val": c.val,
            "n_linear": c.taskvec_n_linear}


def taskvec_model(ctx: Context) -> str:
    """The model the task-vector stage fine-tunes and merges, from the run config."""
    return ctx.cfg.taskvec_model or ctx.cfg.models[0].name


def finetune_config(ctx: Context, model: str, task: str) -> FinetuneConfig:
    """The FinetuneConfig of one task's full fine-tune (its every field is part of the stage's key)."""
    from ..config import make
    from ..finetune import FinetuneConfig

    c = ctx.cfg  # a task vector needs a fine-tuned model: step 0 (tau = 0) is no candidate for early stopping
    return make(FinetuneConfig, model=model, task=task, setting="full", n_train=c.taskvec_n_train, val=c.val,
                n_test=c.taskvec_n_test, max_length=c.max_length, seed=0, lr=c.taskvec_lr, max_steps=c.taskvec_steps,
                patience=4, save_model=True, eval_at_start=False)


def finetune_task(ctx: Context, model: str, task: str, out) -> dict:
    """Fully fine-tune `model` on `task` into the checkpoint folder `out` (resumes a killed run)."""
    from ..finetune import finetune

    res = finetune(finetune_config(ctx, model, task), out, data_dir=ctx.data_dir, progress=False)
    return {"test_best": res.test_best, "best_step": res.best_step, "stopped_step": res.stopped_step,
            "stop_reason": res.stop_reason}


def run(ctx: Context) -> TaskVecStage:
    """Fine-tune each task, then run the task-vector experiment; skipped (with the reason) if unavailable."""
    c = ctx.cfg
    model = taskvec_model(ctx)
    ft = finetune_config(ctx, model, c.taskvec_tasks[0]).model_dump(exclude={"task"})
    key = ctx.stage_key("taskvec", _fields(ctx) | {"weights": ctx.model_fingerprint(model), "finetune": ft,
                                                   "data": {t: ctx.data_fp(t) for t in c.taskvec_tasks}})
    rf = ctx.open_stage("taskvec", key)
    if rf.complete and (rf.root / "taskvec.json").is_file():
        got = json.loads((rf.root / "taskvec.json").read_text())
        return TaskVecStage(**got)
    res = TaskVecStage(model, list(c.taskvec_tasks))
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
        res.report = rep.to_dict()
    except (NtkftError, TypeError) as e:  # TypeError: the experiment's signature changed under us
        res.skipped = f"task-vector experiment failed: {e}"
        log.warning("stage 5: %s", res.skipped)
    rf.write_json("taskvec.json", res.to_dict())
    if res.skipped is None:
        rf.finish(stage="taskvec")
    return res
