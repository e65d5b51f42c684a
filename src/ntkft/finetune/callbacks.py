"""Callbacks of the fine-tuning loop, in the style of Hugging Face's TrainerCallback: the Trainer calls each hook
of every callback in order, passing itself (read its state: step, history, params, rf, ...).

Hooks: on_train_begin (after setup; may resume the state, or set `trainer.result` to hand back a finished run),
on_step_begin (may replace `trainer.rows`, the step's training rows), on_pre_optimizer_step (gradients are in
`.grad`, the step's loss in `trainer.step_loss`; may change both), on_step_end(loss), on_scores (may replace
`trainer.scores`, the validation scores the stopping rule reads), on_evaluate(record) (may add entries to the record
before it is logged), on_log(record), on_save (a checkpoint point), on_fail(loss) (may return a note for the error
message), on_result (may replace `trainer.result`), on_train_end(result).

`default_callbacks` builds the standard set from the config; pass more to `Trainer(..., callbacks=[...])` or
`finetune(..., callbacks=[...])` to add a logger without touching the loop. Order matters where one callback
uses another's work: rank synchronisation comes first (every other callback sees the synchronised state), then the
run folder (it resumes the state and sets `trainer.rf` on rank 0)."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from .._runs import RunFolder
from ..errors import ConfigError, NtkftError
from ..kernel import kernel_matrix, trace_outputs
from ..kernel._common import trim
from .config import FinetuneConfig
from .data import Split
from .early_stopping import EarlyStopping
from .parallel import Ranks
from .result import FinetuneResult
from .settings import Setting
from .state import read_checkpoint, write_checkpoint

log = logging.getLogger(__name__)


class Trainer(Protocol):
    """What a callback reads and sets on the trainer (loop.py's Trainer is one, checked there): the callbacks
    see the trainer through this view and never import the loop, so the loop can import them."""

    cfg: FinetuneConfig
    setting: Setting
    device: torch.device
    ranks: Ranks
    model: Any
    params: dict[str, torch.nn.Parameter]
    theta0: dict[str, torch.Tensor]
    headline: str
    baseline_val: dict[str, float]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    stopper: EarlyStopping
    step: int
    at: int
    best: dict[str, torch.Tensor]
    history: list[Any]
    drift: list[Any]
    seconds: float
    samples: int
    t_start: float
    rf: Any
    result: FinetuneResult | None
    rows: torch.Tensor
    step_loss: float
    scores: dict[str, Any]

    @property
    def val(self) -> Split: ...
    @property
    def test(self) -> Split: ...
    def run_key(self) -> dict[str, Any]: ...
    def evaluate(self, split: Split) -> dict[str, Any]: ...
    def save_model(self, path: Path, weights: str) -> None: ...
    def _set_params(self, theta: dict[str, torch.Tensor]) -> None: ...


class Callback:
    """A no-op for every hook; subclass it and override the hooks you need."""

    def on_train_begin(self, tr: Trainer) -> None: ...
    def on_step_begin(self, tr: Trainer) -> None: ...
    def on_pre_optimizer_step(self, tr: Trainer) -> None: ...
    def on_step_end(self, tr: Trainer, loss: float) -> None: ...
    def on_scores(self, tr: Trainer) -> None: ...
    def on_evaluate(self, tr: Trainer, record: dict) -> None: ...
    def on_log(self, tr: Trainer, record: dict) -> None: ...
    def on_save(self, tr: Trainer) -> None: ...
    def on_fail(self, tr: Trainer, loss: float) -> str | None: ...
    def on_result(self, tr: Trainer) -> None: ...
    def on_train_end(self, tr: Trainer, result: FinetuneResult) -> None: ...


class RankSync(Callback):
    """Data-parallel fine-tuning (torchrun): each rank takes a contiguous share of every step's rows, gradients
    and loss are summed over ranks before the optimiser step (each rank weighted its rows by 1 / the global batch,
    so the sum is the single-process gradient of the same batch), and rank 0's validation scores and result reach
    every rank. A no-op in one process."""

    def on_step_begin(self, tr: Trainer) -> None:
        tr.rows = tr.ranks.shard(tr.rows)

    def on_pre_optimizer_step(self, tr: Trainer) -> None:
        tr.ranks.all_reduce_grads(list(tr.params.values()))
        tr.step_loss = tr.ranks.sum(tr.step_loss)

    def on_scores(self, tr: Trainer) -> None:
        tr.scores = tr.ranks.broadcast(tr.scores if tr.ranks.main else None)

    def on_result(self, tr: Trainer) -> None:
        if not tr.ranks.active:  # one process: the result is already here (no dict round trip)
            return
        got = tr.ranks.broadcast(tr.result.to_dict() if tr.ranks.main and tr.result is not None else None)
        if not tr.ranks.main:
            tr.result = FinetuneResult(**got)


class RunFolderCallback(Callback):
    """OUT: claimed by rank 0 with the run's resume key; a finished run with the same key is handed back as it is
    (nothing rewritten), a killed one resumes from its newest whole checkpoint; checkpoints at save points; the
    model and result.json at the end; the last good weights when the loss goes non-finite."""

    def __init__(self, out: str | Path, overwrite: bool = False) -> None:
        self.out, self.overwrite = Path(out), overwrite

    def on_train_begin(self, tr: Trainer) -> None:
        rf = RunFolder(self.out, "finetune", tr.run_key(), self.overwrite) if tr.ranks.main else None
        status: tuple[str, Any] = ("fresh", None)
        if rf is not None:
            try:
                resumed = rf.open()
            except NtkftError as e:  # tell the other ranks before giving up, so none of them waits forever
                tr.ranks.broadcast(("error", str(e)))
                raise
            done = rf.finished_json("result.json", ["model/model.safetensors"] if tr.cfg.save_model else [])
            if resumed and done is not None:
                log.info("%s: finished run with the same key; returning its result", rf.root)
                status = ("done", done)
            elif resumed:
                status = ("resume", str(rf.root))
            else:
                rf.write_json("config.json", tr.cfg.model_dump())
        status = tr.ranks.broadcast(status)  # the hand-shake: every rank learns what rank 0 found
        if status[0] == "error":
            raise ConfigError(status[1])
        if status[0] == "done":
            tr.result = FinetuneResult(**status[1])
            return
        if status[0] == "resume" and (ck := read_checkpoint(Path(status[1]))) is not None:
            trainable, best, blob, meta = ck
            tr._set_params(trainable)
            tr.best = best
            tr.opt.load_state_dict(blob["opt"])
            tr.sched.load_state_dict(blob["sched"])
            torch.set_rng_state(blob["rng"])
            if blob.get("cuda_rng"):
                torch.cuda.set_rng_state_all(blob["cuda_rng"])
            tr.step, tr.history, tr.drift = meta["step"], meta["history"], meta["drift"]
            tr.seconds, tr.samples = meta.get("seconds", 0.0), meta.get("samples", 0)
            tr.at = tr.step
            tr.stopper.load_state_dict(meta["stopper"])
            log.info("resumed from step %d", tr.step)
        tr.rf = rf

    def on_save(self, tr: Trainer) -> None:
        """One atomic checkpoint of everything a resumed run needs."""
        if tr.rf is None:
            return
        optim = {"opt": tr.opt.state_dict(), "sched": tr.sched.state_dict(), "rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if tr.device.type == "cuda" else []}
        write_checkpoint(tr.rf, tr.step, {n: p.detach() for n, p in tr.params.items()}, tr.best, optim,
                         {"step": tr.step, "stopper": tr.stopper.state_dict(), "history": tr.history,
                          "drift": tr.drift, "seconds": time.time() - tr.t_start, "samples": tr.samples})

    def on_fail(self, tr: Trainer, loss: float) -> str | None:
        if tr.rf is None or not tr.cfg.save_model:
            return None
        tr.save_model(tr.rf.path("model"), tr.rf.key["weights"])
        return f"; last good weights (step {tr.stopper.best_step}) saved in {tr.rf.root / 'model'}"

    def on_train_end(self, tr: Trainer, result: FinetuneResult) -> None:
        rf = tr.rf
        if rf is None:
            return
        if tr.cfg.save_model:
            tr.save_model(rf.path("model"), rf.key["weights"])
        rf.write_json("result.json", result.to_dict())
        if (rf.root / "state").exists():
            rf.remove("state")  # the result is complete; the resumable state is no longer needed
        rf.finish(model=tr.cfg.model, task=tr.cfg.task, setting=tr.cfg.setting, seconds=round(result.seconds, 2))


class MetricsLog(Callback):
    """OUT/metrics.jsonl: one JSON line per evaluation (rewritten from the resumed history at the start)."""

    def on_train_begin(self, tr: Trainer) -> None:
        if tr.rf is not None:
            tr.rf.write_text("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in tr.history))

    def on_log(self, tr: Trainer, record: dict) -> None:
        if tr.rf is not None:
            with open(tr.rf.path("metrics.jsonl"), "a") as fh:
                fh.write(json.dumps(record) + "\n")


class TensorBoard(Callback):
    """OUT/tb: every numeric entry of each logged record as a scalar (needs the tensorboard package)."""

    def __init__(self) -> None:
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("--tensorboard needs `pip install tensorboard`")
        self.writer: Any = None

    def on_train_begin(self, tr: Trainer) -> None:
        if tr.rf is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(tr.rf.path("tb")))

    def on_log(self, tr: Trainer, record: dict) -> None:
        if self.writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, record["step"])

    def on_train_end(self, tr: Trainer, result: FinetuneResult) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressBar(Callback):
    """A tqdm bar over optimiser steps (rank 0): the training loss, and at each evaluation the headline validation
    metric in the targets' units beside the constant predictor's on the same rows (`val_mse=0.81 const=0.95`)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def on_train_begin(self, tr: Trainer) -> None:
        self.bar = tqdm(total=tr.cfg.max_steps, initial=tr.step, disable=not (self.enabled and tr.ranks.main),
                        desc=f"{tr.cfg.setting} {tr.cfg.task}")

    def on_step_end(self, tr: Trainer, loss: float) -> None:
        self.bar.update(1)

    def on_evaluate(self, tr: Trainer, record: dict) -> None:
        m, loss = tr.headline, record.get("train_loss")
        self.bar.set_postfix_str(f"loss={'-' if loss is None else f'{loss:.4f}'} "
                                 f"val_{m}={record.get(f'val_{m}', math.nan):.4g} const={tr.baseline_val[m]:.4g}")

    def on_train_end(self, tr: Trainer, result: FinetuneResult) -> None:
        self.bar.close()


class KernelDrift(Callback):
    """Every `drift_every` steps (at evaluations) on `drift_n` validation rows, rank 0: ||K_t - K_0||_F / ||K_0||_F
    of the eNTK (eq 17, 99), ||theta_t - theta_PT|| and the mean linearisation gap |f - f_lin| (Lemma 1)."""

    def __init__(self, every: int, n: int) -> None:
        self.every, self.n = every, n
        self.k0: torch.Tensor | None = None

    def on_train_begin(self, tr: Trainer) -> None:
        k = min(self.n, len(tr.val))
        self.x = {"input_ids": tr.val.ids[:k], "attention_mask": tr.val.mask[:k]}
        if not tr.drift and tr.ranks.main:
            tr.drift.append(self.point(tr))

    def on_evaluate(self, tr: Trainer, record: dict) -> None:
        if tr.ranks.main and tr.step % self.every == 0 and tr.drift[-1]["step"] != tr.step:
            tr.drift.append(self.point(tr))

    def point(self, tr: Trainer) -> dict:
        dist = math.sqrt(sum(float((p.detach() - tr.theta0[n]).pow(2).sum()) for n, p in tr.params.items()))
        point: dict[str, Any] = {"step": tr.step, "param_distance": dist}
        if not tr.setting.tracks_drift:
            return point
        if self.k0 is None:
            self.k0 = self._kernel_at(tr, tr.theta0)
        point["kernel_drift"] = float((self._kernel_at(tr) - self.k0).norm() / self.k0.norm())
        point["linearisation_gap"] = self._lin_gap(tr)
        return point

    @torch.no_grad()
    def _lin_gap(self, tr: Trainer) -> float:
        from torch.func import functional_call, jvp

        ids, mask = (t.to(tr.device) for t in trim(self.x["input_ids"], self.x["attention_mask"]))
        tr.model.eval()
        names = list(tr.params)
        theta0 = {n: tr.theta0[n] for n in names}
        tangent = {n: tr.params[n].detach() - tr.theta0[n] for n in names}
        f = lambda p: functional_call(tr.model, p, (ids, mask), strict=False)  # noqa: E731
        f0, df = jvp(f, (theta0,), (tangent,))  # type: ignore[misc]
        return float((tr.model(ids, mask) - (f0 + df)).abs().mean().cpu())

    def _kernel_at(self, tr: Trainer, theta: dict | None = None) -> torch.Tensor:
        """eNTK on the probe rows at `theta` (default: the current parameters, left untouched)."""
        cur = None
        if theta is not None:
            cur = {n: p.detach().clone() for n, p in tr.params.items()}
            tr._set_params(theta)
        k = kernel_matrix(tr.model, self.x, params="all", progress=False)
        if cur is not None:
            tr._set_params(cur)
        c = getattr(tr.model, "out_dim", 1)
        return trace_outputs(k, c) if c > 1 else k


def default_callbacks(cfg: FinetuneConfig, out: str | Path | None, progress: bool = True,
                      overwrite: bool = False) -> list[Callback]:
    """The standard set for `cfg`: run folder + metrics.jsonl (+ TensorBoard) when writing to `out`, kernel drift
    when asked, and the progress bar."""
    cbs: list[Callback] = [RankSync()]
    if out is not None:
        cbs += [RunFolderCallback(out, overwrite), MetricsLog()] + ([TensorBoard()] if cfg.tensorboard else [])
    if cfg.drift_every:
        cbs.append(KernelDrift(cfg.drift_every, cfg.drift_n))
    return [*cbs, ProgressBar(progress)]


class ScoreTest(Callback):
    """Adds the test split's scores (test_*) to every evaluation's record: for an oracle stopping step, which a
    real run must not choose by (the test rows are then no longer unseen)."""

    def on_evaluate(self, tr: Trainer, record: dict) -> None:
        record.update({f"test_{k}": v for k, v in tr.evaluate(tr.test).items()})
