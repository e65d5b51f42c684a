"""The fine-tuning loop: full-batch GD or mini-batch AdamW, hold-out early stopping with best-weight restore.
`Trainer.fit` reads top to bottom; everything around it (run folder, checkpoints and resume, metrics.jsonl,
TensorBoard, kernel drift, progress bar, rank synchronisation) is a callback (callbacks.py), so a new logger is a
new callback.

Data-parallel runs: the loop marks where ranks meet with hooks, and `callbacks.RankSync` communicates there:
`on_step_begin` (this rank's share of the step's rows), `on_pre_optimizer_step` (gradients and loss summed over
ranks), `on_scores` (rank 0's validation scores on every rank, so every rank's stopping rule decides the same) and
`on_result` (rank 0's result on every rank). The loop only asks `ranks.main` for the work rank 0 alone does."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import TrainingError
from .callbacks import Callback, default_callbacks
from .callbacks import Trainer as TrainerView
from .config import FinetuneConfig
from .data import check_monitor, length_split, step_rows
from .early_stopping import EarlyStopping
from .predictor import Predictor, loss_fn
from .result import FinetuneResult

log = logging.getLogger(__name__)

__all__ = ["FinetuneResult", "Trainer", "TrainingError", "finetune"]


class Trainer(Predictor):
    """Runs one fine-tuning configuration; `fit()` returns a FinetuneResult (and writes the run folder `out`).
    The constructor only checks options; `setup()` (called by `fit`) loads model and data."""

    def __init__(self, cfg: FinetuneConfig, out: str | Path | None = None, data_dir: str | None = None,
                 progress: bool = True, overwrite: bool = False, callbacks: Sequence[Callback] = ()) -> None:
        super().__init__(cfg, data_dir)
        self.callbacks = default_callbacks(cfg, out, progress, overwrite) + list(callbacks)
        self.rf: Any = None  # the run folder, once a callback has claimed it (rank 0 only)
        self.result: FinetuneResult | None = None  # a finished run's result, handed back by the run folder
        self.rows = torch.empty(0, dtype=torch.long)  # this step's training rows (this rank's share)
        self.step_loss = 0.0  # this step's training loss (summed over ranks before the optimiser step)
        self.scores: dict[str, Any] = {}  # the latest validation scores (rank 0's, on every rank)

    def setup(self) -> Trainer:
        """Model and data (Predictor.setup), then the optimiser, schedule and stopping rule (once; returns self)."""
        if self.ready:
            return self
        super().setup()
        cfg = self.cfg
        self.lr = cfg.lr if cfg.lr is not None else 0.0 if cfg.optimizer == "ridge" else self.feature_step()
        params = list(self.params.values())
        self.opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=self.lr, weight_decay=cfg.weight_decay) \
            if cfg.optimizer == "gd" else torch.optim.AdamW(params, lr=self.lr, weight_decay=cfg.weight_decay, fused=True)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, cfg.lr_factor)
        self.monitor = check_monitor(self.data.spec, cfg.monitor)
        self.stopper = EarlyStopping(cfg.patience, cfg.min_delta, cfg.mode or ("min" if self.monitor in ("loss", "mse")
                                                                               else "max"))
        n = len(self.train)
        self.per_step = n if cfg.optimizer in ("gd", "ridge") else min(n, cfg.batch_size * cfg.grad_accum)  # samples per step
        steps_per_epoch = max(1, math.ceil(n / self.per_step))
        # default: each epoch, at least 10 times per run; full-batch GD (an epoch per step) every max_steps/50 steps
        self.eval_every = cfg.eval_every or (max(1, cfg.max_steps // 50) if cfg.optimizer in ("gd", "ridge")
                                             else min(steps_per_epoch, max(1, cfg.max_steps // 10)))
        self.step, self.history, self.drift = 0, [], []  # type: tuple[int, list, list]
        self.seconds, self.samples, self.t_start = 0.0, 0, time.time()  # training time and samples, over resumes
        self.best = {n: p.detach().clone() for n, p in self.params.items()}
        return self

    def _fire(self, event: str, **kw: Any) -> list[Any]:
        view: TrainerView = self  # the type checker holds the Trainer to the view the callbacks are written against
        return [getattr(cb, event)(view, **kw) for cb in self.callbacks]

    # ------------------------------------------------------------------ the loop

    def fit(self) -> FinetuneResult:
        """Train until early stopping or max_steps; restore the best weights; evaluate beside the constant predictor."""
        cfg = self.setup().cfg
        for cb in self.callbacks:  # the run folder may resume the state, or hand back a finished run's result
            cb.on_train_begin(self)
            if self.result is not None:
                return self.result
        if self.step == 0:
            torch.manual_seed(cfg.seed)  # dropout draws; a resumed run restores the saved RNG state instead
        self.t_start = time.time() - self.seconds  # (a resumed run goes on counting)
        stop = self.stopper.reason != "" and self.step > 0
        # step 0 competes: training may never help (ridge: its cross-validated penalty already weighs the constant)
        if cfg.eval_at_start and self.step == 0 and not self.history and cfg.optimizer != "ridge":
            stop = self._evaluation(None)
        while not stop and self.step < cfg.max_steps:
            loss = self._train_step()
            if not math.isfinite(loss):
                self._fail(loss)
            self.samples += self.per_step
            self._fire("on_step_end", loss=loss)
            if self.step % self.eval_every == 0 or self.step == cfg.max_steps:
                stop = self._evaluation(loss)
                self._fire("on_save")
            elif cfg.save_every and self.step % cfg.save_every == 0:
                self._fire("on_save")
        self.seconds = time.time() - self.t_start
        result = self._final()
        self._fire("on_train_end", result=result)
        return result

    def _train_step(self) -> float:
        """One optimiser step (micro-batched); returns the training loss (non-finite: no step taken)."""
        self.setup().model.train()
        if self.cfg.optimizer == "ridge":
            return self._ridge_step()
        idx = step_rows(len(self.train), self.step, self.per_step, self.cfg.seed, self.cfg.optimizer == "gd")
        self.rows = idx
        self._fire("on_step_begin")  # (data-parallel: this rank's share of the rows)
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        chunks = self.rows.split(self.cfg.batch_size)
        if self.train.h is None:  # token inputs: rows of similar length together (less padding)
            chunks = tuple(part for ch in chunks for part in length_split(ch, self.train.mask))
        for ch in chunks:
            with self.masks.batch(self.step, ch):  # dropout masks of (seed, step, sample): any split draws the same
                out = self._forward(self.train, ch)
            loss = loss_fn(out, self._target(self.train.y[ch]).to(self.device), self.task_type)
            if self.cfg.ridge:
                loss = loss + self.cfg.ridge * self.model.head.weight.pow(2).sum()
            (loss * (len(ch) / len(idx))).backward()
            total += float(loss.detach()) * len(ch) / len(idx)
        self.step_loss = total
        self._fire("on_pre_optimizer_step")  # (data-parallel: gradients and loss summed over ranks)
        total = self.step_loss
        if not math.isfinite(total):
            return total
        self.opt.step()
        self.sched.step()
        self.step += 1
        self.at = self.step
        return total

    def _ridge_step(self) -> float:
        """The closed-form probe (ridge.py) as the run's one step; the chosen penalty goes into the stop reason."""
        from .ridge import fit_classification, fit_regression

        h, y, ridge = self.train.h, self.train.y, self.cfg.ridge or None
        assert h is not None
        fit = fit_regression(h, self._target(y.double()), ridge) if self.task_type == "regression" \
            else fit_classification(h, y, self.out_dim, ridge, self.cfg.seed)
        head = self.model.head
        with torch.no_grad():
            head.weight.copy_(fit.weight)
            head.bias.copy_(fit.bias)
        how = "given" if ridge else (f"chosen by {'leave-one-out' if self.task_type == 'regression' else 'K-fold'} "
                                     f"CV over {len(h)} training rows: loss {fit.cv_loss:.4g} vs the constant's "
                                     f"{fit.cv_constant:.4g}, kept if better by > 1 paired SE")
        self.stopper.reason = f"closed-form ridge fit, penalty {fit.ridge:.3g} ({how}; inf = the constant)"
        self.step += 1
        self.at = self.step
        with torch.no_grad():
            out = self._forward(self.train, torch.arange(len(h)))
        return float(loss_fn(out, self._target(y).to(self.device), self.task_type))

    def _evaluation(self, loss: float | None) -> bool:
        """Score the hold-out split (rank 0 decides), keep the best weights, log; returns whether to stop."""
        self.scores = self.evaluate(self.val) if self.ranks.main else {}
        self._fire("on_scores")  # (data-parallel: rank 0's scores on every rank, so every rank's rule decides alike)
        val = self.scores
        improved, stop = self.stopper.update(val.get(self.monitor, float("nan")), self.step)
        if improved:
            self.best = {n: p.detach().clone() for n, p in self.params.items()}
        rec = {"step": self.step, "train_loss": loss, "lr": self.sched.get_last_lr()[0],
               **{f"val_{k}": v for k, v in val.items()}}
        self._fire("on_evaluate", record=rec)  # callbacks may add to the record (e.g. test scores for an oracle)
        self._log(rec)
        return bool(stop)

    def _log(self, rec: dict) -> None:
        self.history.append(rec)
        self._fire("on_log", record=rec)

    def _fail(self, loss: float) -> None:
        self._set_params(self.best)
        notes = "".join(n for n in self._fire("on_fail", loss=loss) if n)
        raise TrainingError(f"non-finite training loss at step {self.step + 1} (learning rate {self.lr:g} "
                            f"too large?){notes}")

    def _final(self) -> FinetuneResult:
        """Rank 0 scores the last and the best step beside the constant predictor; every rank returns its result."""
        stopped = self.step
        test_last = self.evaluate(self.test) if self.ranks.main else {}
        self._set_params(self.best)
        self.at = self.stopper.best_step
        self.result = self._scored(stopped, test_last) if self.ranks.main else None
        self._fire("on_result")  # (data-parallel: rank 0's result on every rank)
        assert self.result is not None
        return self.result

    def _scored(self, stopped: int, test_last: dict[str, Any]) -> FinetuneResult:
        """The result (rank 0): the kept weights' scores on every split beside the constant predictor's."""
        test_best, base, m = self.evaluate(self.test), self.baseline_test, self.headline
        beats = bool(test_best.get(m, math.nan) < base[m] if m == "mse" else test_best.get(m, math.nan) > base[m])
        res = FinetuneResult({**self.cfg.model_dump(), "lr": self.lr}, self.stopper.best_step, stopped,
                             self.stopper.reason or f"reached max_steps={self.cfg.max_steps}", self.stopper.best,
                             self.monitor, self.evaluate(self.val), test_best, test_last, self.seconds,
                             self.samples / self.seconds if self.seconds > 0 else float("nan"), self.history,
                             self.drift, self._warnings(beats), self.baseline_val, base, self.constant_name(), m, beats,
                             None if self.task_type == "regression" else "binary" if self.out_dim == 2 else "macro")
        return res

    def _warnings(self, beats: bool) -> list[str]:
        """Say so when a run ends at max_steps still improving (not converged), when the kept model is worse on the
        hold-out split than the training mean (regression, monitoring the loss), or no better than the constant
        predictor on the test rows."""
        st, out, m = self.stopper, [], self.headline
        if not st.reason and self.step >= self.cfg.max_steps and st.best_step == self.step and \
                len([r for r in self.history if r["step"] > 0]) > 1:
            out.append(f"training ended at max_steps={self.cfg.max_steps} while the validation {self.monitor} was "
                       "still improving; raise max_steps or the learning rate")
        const = self.baseline_val["loss"]
        if self.task_type == "regression" and self.monitor == "loss" and st.best is not None and \
                st.best > const * (1 + 1e-6):  # (a centred start is the mean itself, up to rounding)
            out.append(f"the kept model (step {st.best_step}) has validation loss {st.best:.4g}, worse than "
                       f"predicting the training mean ({const:.4g})")
        if not beats:
            out.append(f"on the {len(self.test)} test rows the kept model (step {st.best_step}) has {m} "
                       f"{self.evaluate(self.test)[m]:.4g}, no better than the constant predictor's "
                       f"{self.baseline_test[m]:.4g} ({self.constant_name()} for every row)")
        for msg in out:
            log.warning(msg)
        return out


def finetune(cfg: FinetuneConfig, out: str | Path | None = None, data_dir: str | None = None, progress: bool = True,
             overwrite: bool = False, callbacks: Sequence[Callback] = ()) -> FinetuneResult:
    """Fine-tune one configuration with hold-out early stopping; resumes a killed run in `out` with the same key."""
    return Trainer(cfg, out, data_dir, progress, overwrite, callbacks).fit()
