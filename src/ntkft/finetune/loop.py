"""The fine-tuning loop: full-batch GD or mini-batch AdamW, hold-out early stopping with best-weight
restore, optional kernel-drift tracking, atomic resumable checkpoints. `Trainer.fit` reads top to bottom."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from tqdm.auto import tqdm

from .._runs import RunFolder
from ..errors import ConfigError, NtkftError, TrainingError
from ..kernel import kernel_matrix, trace_outputs
from ..kernel._common import trim
from ..models import fingerprint, load_model
from ..tasks import task_metrics
from .config import FinetuneConfig
from .data import Split, by_length, cache_features, check_monitor, in_row_order, length_split, prepare
from .early_stopping import EarlyStopping
from .parallel import ranks_from_env
from .settings import get_setting, readout_of
from .state import read_checkpoint, write_checkpoint

log = logging.getLogger(__name__)

__all__ = ["FinetuneResult", "Trainer", "TrainingError", "finetune"]


@dataclass
class FinetuneResult:
    """What a run reports: where it stopped and why, validation and test metrics, history and drift."""

    config: dict
    best_step: int
    stopped_step: int
    stop_reason: str
    best_val: float | None
    monitor: str
    val_best: dict
    test_best: dict
    test_last: dict
    seconds: float
    samples_per_second: float
    history: list = field(default_factory=list)
    drift: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _loss(out: torch.Tensor, y: torch.Tensor, task_type: str) -> torch.Tensor:
    if task_type == "regression":
        return torch.mean((out.reshape(-1) - y) ** 2)
    return nn.functional.cross_entropy(out, y)


def _schedule(cfg: FinetuneConfig):
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        frac = min(max((step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps), 0.0), 1.0)
        return 1.0 - frac if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
    return f


def _device(cfg: FinetuneConfig) -> torch.device:
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise ConfigError("device 'cuda' asked for, but no CUDA device is available")
    if cfg.bf16 and not (cuda and cfg.device != "cpu"):
        raise ConfigError("--bf16 is a CUDA autocast option; on CPU ntkft trains in fp32")
    return torch.device("cuda" if cuda and cfg.device != "cpu" else "cpu")


class Trainer:
    """Runs one fine-tuning configuration; `fit()` returns a FinetuneResult and writes the run folder `out`."""

    def __init__(self, cfg: FinetuneConfig, out: str | Path | None = None, data_dir: str | None = None,
                 progress: bool = True, overwrite: bool = False) -> None:
        self.cfg, self.progress = cfg, progress
        self.setting = get_setting(cfg.setting)
        self.device = _device(cfg)
        self.ranks = ranks_from_env(self.device)
        if self.ranks.active and self.device.type == "cuda":
            self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
            torch.cuda.set_device(self.device)
        self.loaded = load_model(cfg.model, pooling=cfg.pooling)
        self.data = prepare(cfg, self.loaded, data_dir)
        self.task_type = self.data.task_type
        self.num_classes = self.data.num_classes
        self.model: Any = self.setting.build(self.loaded, self.data.out_dim, cfg.layers, cfg.sigma, cfg.seed).to(self.device)
        # regression targets in training units: (y - shift) / scale (0 and 1 unless standardize)
        self.shift, self.scale = 0.0, 1.0
        self.c = torch.zeros(())  # the constant a centred start begins at (center_output), training units
        self.at = 0  # the step whose weights the model holds (the best step's after the final restore)
        self._evals: dict[tuple[int, int], dict] = {}  # (id(split), at) -> evaluate(split): no second pass
        if cfg.standardize and self.task_type == "regression":
            y = self.train.y.double()
            self.shift, self.scale = float(y.mean()), float(y.std(unbiased=False)) or 1.0
        if self.setting.frozen_backbone:
            cache_features(self.model, [self.train, self.val, self.test], self.device)
        if cfg.center_output:
            self._offset_start()
        elif cfg.standardize if self.task_type == "regression" else cfg.start_at_prior:
            self._center_head()
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ConfigError(f"setting '{cfg.setting}' leaves nothing to train")
        self.theta0 = {n: p.detach().clone() for n, p in self.params.items()}
        self.lr = cfg.lr if cfg.lr is not None else self._feature_step()
        if cfg.optimizer == "gd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(self.params.values(), lr=self.lr, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.AdamW(self.params.values(), lr=self.lr, weight_decay=cfg.weight_decay, fused=True)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _schedule(cfg))
        self.monitor = check_monitor(self.data.spec, cfg.monitor)
        mode = cfg.mode or ("min" if self.monitor in ("loss", "mse") else "max")
        self.stopper = EarlyStopping(cfg.patience, cfg.min_delta, mode)
        n = len(self.train)
        self.per_step = n if cfg.optimizer == "gd" else min(n, cfg.batch_size * cfg.grad_accum)
        self.steps_per_epoch = max(1, math.ceil(n / self.per_step))
        # default: each epoch, at least 10 times per run; full-batch GD (an epoch per step) every max_steps/50 steps
        self.eval_every = cfg.eval_every or (max(1, cfg.max_steps // 50) if cfg.optimizer == "gd"
                                             else min(self.steps_per_epoch, max(1, cfg.max_steps // 10)))
        self.step, self.history, self.drift = 0, [], []  # type: tuple[int, list, list]
        self.best = {n: p.detach().clone() for n, p in self.params.items()}
        self.drift_x: dict[str, torch.Tensor] | None = None
        self.k0: torch.Tensor | None = None
        if cfg.drift_every:
            k = min(cfg.drift_n, len(self.val))
            self.drift_x = {"input_ids": self.val.ids[:k], "attention_mask": self.val.mask[:k]}
        self.out = Path(out) if out is not None else None
        self.rf = RunFolder(out, "finetune", self.run_key(), overwrite) if out is not None and self.ranks.main else None
        self.writer: Any = None

    def _center_head(self) -> None:
        """Set the head's bias so that f starts at the constant predictor on average over the training inputs: the
        training mean (regression), or mean logits = the log class prior (classification). The random head's offset
        W . mean(h) (a target sd or more; or a class every row is given) would cost a short fine-tune all its steps,
        and step 0 would be a poor model to keep; the eNTK has no b in it."""
        head = cast(nn.Linear, self.model.head)  # Readout and Linearized both expose .head
        with torch.no_grad():
            head.bias.zero_()
            out = self._outputs(self.train)
            head.bias.copy_(self._constant() - out.double().mean(0))

    def _constant(self) -> torch.Tensor:
        """The constant predictor in training units: the training targets' mean (regression, shape ()), or the log
        class prior as logits (classification; uniform without start_at_prior)."""
        if self.task_type == "regression":
            return self._target(self.train.y.double()).mean()
        c = self.num_classes or 2
        if not self.cfg.start_at_prior:
            return torch.zeros(c, dtype=torch.float64)
        counts = torch.bincount(self.train.y.long(), minlength=c).double() + 0.5  # no log 0
        return (counts / counts.sum()).log()

    def _offset_start(self) -> None:
        """center_output: remember g_0(x) on every row of every split; f = (g - g_0) + c is then exactly c at step 0
        (the same batches give the same g bit for bit), one value for all rows, so ties in c stay ties."""
        for split in (self.train, self.val, self.test):
            split.g0 = None
            split.g0 = self._outputs(split).to(self.device)
        self.c = self._constant().float().to(self.device)
        for split in (self.val, self.test):  # step 0's evaluation is c on every row: no second forward pass
            const = self.c.cpu().expand(len(split), *self.c.shape).clone()
            self._evals[(id(split), 0)] = self._evaluate(split, self._units(const))

    def _feature_step(self) -> float:
        """1 / (2 lambda_max) of the cached features' second moment M = [h, 1]^T [h, 1] / n: the squared loss has
        Hessian 2M, so this is RWY's step bound alpha <= 1/lambda_1 on it (ridge added if set): no oscillation."""
        h = self.train.h
        assert h is not None
        z = torch.cat([h.double(), torch.ones(len(h), 1, dtype=torch.float64, device=h.device)], 1)
        lam = float(torch.linalg.eigvalsh(z.T @ z / len(h))[-1]) + self.cfg.ridge
        return 1.0 / (2 * lam)

    @property
    def train(self) -> Split:
        return self.data.train

    @property
    def val(self) -> Split:
        return self.data.val

    @property
    def test(self) -> Split:
        return self.data.test

    def run_key(self) -> dict:
        """Everything that determines the result: every config field, the weights and the rows used."""
        skip = {"save_every", "tensorboard", "device"}
        return {"config": self.cfg.model_dump(exclude=skip), "weights": fingerprint(self.loaded.backbone),
                "data": self.data.fingerprint}

    # ------------------------------------------------------------------ one step, prediction, evaluation

    def _batch_indices(self, step: int) -> torch.Tensor:
        """Samples of optimiser step `step`: an epoch-seeded permutation, so resume replays the order."""
        n = len(self.train)
        if self.cfg.optimizer == "gd":
            return torch.arange(n)
        epoch, pos = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch))
        return perm[pos * self.per_step:(pos + 1) * self.per_step]

    def _forward(self, split: Split, idx: torch.Tensor) -> torch.Tensor:
        if split.h is not None:
            out = self.model.head(split.h[idx].to(self.device))
            out = out.squeeze(-1) if self.model.out_dim == 1 else out
        else:
            ids, mask = trim(split.ids[idx], split.mask[idx])
            ids, mask = ids.to(self.device), mask.to(self.device)
            if self.cfg.bf16:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = self.model(ids, mask).float()
            else:
                out = self.model(ids, mask)
        return out if split.g0 is None else (out - split.g0[idx.to(split.g0.device)]) + self.c

    def _train_step(self) -> float:
        """One optimiser step (micro-batched); returns the training loss (non-finite: no step taken)."""
        self.model.train()
        idx = self._batch_indices(self.step)
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        chunks = self.ranks.shard(idx).split(self.cfg.batch_size)  # all of idx, or this rank's share
        if self.train.h is None:  # token inputs: rows of similar length together (less padding)
            chunks = tuple(part for ch in chunks for part in length_split(ch, self.train.mask))
        for ch in chunks:
            loss = _loss(self._forward(self.train, ch), self._target(self.train.y[ch]).to(self.device), self.task_type)
            if self.cfg.ridge:
                loss = loss + self.cfg.ridge * self.model.head.weight.pow(2).sum()
            (loss * (len(ch) / len(idx))).backward()
            total += float(loss.detach()) * len(ch) / len(idx)
        self.ranks.all_reduce_grads(list(self.params.values()))
        total = self.ranks.sum(total)
        if not math.isfinite(total):
            return total
        self.opt.step()
        self.sched.step()
        self.step += 1
        self.at = self.step
        return total

    def _target(self, y: torch.Tensor) -> torch.Tensor:
        """Targets in training units (standardised regression targets; classes unchanged)."""
        return (y - self.shift) / self.scale if self.task_type == "regression" else y

    @torch.no_grad()
    def _outputs(self, split: Split) -> torch.Tensor:
        """f on every row of `split` in training units, in row order (eval mode; batches of similar length)."""
        self.model.eval()
        parts = list(torch.arange(len(split)).split(64)) if split.h is not None else by_length(split.mask, 64)
        return in_row_order(parts, [self._forward(split, ix) for ix in parts]).float().cpu()

    def predict(self, split: Split) -> torch.Tensor:
        """Predictions in the targets' units (regression) or class logits, in the split's row order."""
        return self._units(self._outputs(split))

    def _units(self, out: torch.Tensor) -> torch.Tensor:
        """Outputs in training units -> the targets' units (regression; class logits unchanged)."""
        return out * self.scale + self.shift if self.task_type == "regression" else out

    def evaluate(self, split: Split) -> dict:
        """The training objective ("loss", in training units) and the task's metrics (in the targets' units);
        remembered per weights, so the final report at the best and last step reuses the evaluations made then."""
        key = (id(split), self.at)
        if key not in self._evals:
            self._evals[key] = self._evaluate(split)
        return dict(self._evals[key])

    def _evaluate(self, split: Split, out: torch.Tensor | None = None) -> dict:
        out = self.predict(split) if out is None else out
        loss = float(_loss(self._target(out), self._target(split.y), self.task_type))
        if not math.isfinite(loss):
            return {"loss": loss}
        pred = out.reshape(-1).numpy() if self.task_type == "regression" else out.numpy()
        return {"loss": loss, **task_metrics(self.task_type, pred, split.y.numpy(), self.num_classes or 2)}

    # ------------------------------------------------------------------ the loop

    def fit(self) -> FinetuneResult:
        """Train until early stopping or max_steps; restore the best weights; evaluate; write the run folder."""
        cfg = self.cfg
        done = self._open_run()
        if done is not None:
            return done
        if self.step == 0:
            torch.manual_seed(cfg.seed)  # dropout draws; a resumed run restores the saved RNG state instead
        if cfg.drift_every and not self.drift:
            self.drift.append(self.ranks.broadcast(self._drift_point() if self.ranks.main else None))
        t0, seen = time.time(), 0
        stop = self.stopper.reason != "" and self.step > 0
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (self.progress and self.ranks.main),
                   desc=f"{cfg.setting} {cfg.task}")
        if cfg.eval_at_start and self.step == 0 and not self.history:  # step 0 competes: training may never help
            stop = self._evaluation(None, bar)
        while not stop and self.step < cfg.max_steps:
            loss = self._train_step()
            if not math.isfinite(loss):
                self._fail(loss)
            seen += self.per_step
            bar.update(1)
            if self.step % self.eval_every == 0 or self.step == cfg.max_steps:
                stop = self._evaluation(loss, bar)
                if cfg.drift_every and self.step % cfg.drift_every == 0:
                    self.drift.append(self.ranks.broadcast(self._drift_point() if self.ranks.main else None))
                self.save_state()
            elif cfg.save_every and self.step % cfg.save_every == 0:
                self.save_state()
        bar.close()
        seconds = time.time() - t0
        stopped = self.step
        if not self.ranks.main:  # rank 0 evaluates and writes; the others return its result
            self._set_params(self.best)
            return FinetuneResult(**self.ranks.broadcast(None))
        warnings = self._warnings()
        test_last = self.evaluate(self.test)
        self._set_params(self.best)
        self.at = self.stopper.best_step
        res = FinetuneResult({**cfg.model_dump(), "lr": self.lr}, self.stopper.best_step, stopped,
                             self.stopper.reason or f"reached max_steps={cfg.max_steps}", self.stopper.best,
                             self.monitor, self.evaluate(self.val), self.evaluate(self.test), test_last, seconds,
                             seen * self.ranks.world / seconds if seconds > 0 else float("nan"), self.history,
                             self.drift, warnings)
        self._close_run(res)
        self.ranks.broadcast(res.to_dict())
        return res

    def _evaluation(self, loss: float | None, bar: Any) -> bool:
        """Score the hold-out split (rank 0 decides), keep the best weights, log; returns whether to stop."""
        val = self.ranks.broadcast(self.evaluate(self.val) if self.ranks.main else None)
        value = val.get(self.monitor, float("nan"))
        improved, stop = self.stopper.update(value, self.step)
        stop = self.ranks.broadcast(stop)
        if improved:
            self.best = {n: p.detach().clone() for n, p in self.params.items()}
        self._log({"step": self.step, "train_loss": loss, "lr": self.sched.get_last_lr()[0],
                   **{f"val_{k}": v for k, v in val.items()}})
        shown = {"train_loss": "-" if loss is None else f"{loss:.4f}", f"val_{self.monitor}": f"{value:.4f}"}
        if self.monitor != "mse" and "mse" in val:  # regression: also the error in the targets' own units
            shown["val_mse"] = f"{val['mse']:.4f}"
        bar.set_postfix(shown)  # labelled: the monitored value is named, not a bare `val=`
        return bool(stop)

    def _warnings(self) -> list[str]:
        """Say so when a run ends at max_steps still improving (not converged), or when the kept model is worse
        on the hold-out split than predicting the training mean (regression, monitoring the loss)."""
        st, out = self.stopper, []
        evals = [r for r in self.history if r["step"] > 0]
        if not st.reason and self.step >= self.cfg.max_steps and st.best_step == self.step and len(evals) > 1:
            out.append(f"training ended at max_steps={self.cfg.max_steps} while the validation {self.monitor} was "
                       "still improving; raise max_steps or the learning rate")
        if self.task_type == "regression" and self.monitor == "loss" and st.best is not None:
            const = float(self._target(self.val.y.double()).pow(2).mean()) if self.cfg.standardize else \
                float((self.val.y.double() - self.train.y.double().mean()).pow(2).mean())
            if st.best > const * (1 + 1e-6):  # (a centred start is the mean itself, up to rounding)
                out.append(f"the kept model (step {st.best_step}) has validation loss {st.best:.4g}, worse than "
                           f"predicting the training mean ({const:.4g})")
        for msg in out:
            log.warning(msg)
        return out

    def _fail(self, loss: float) -> None:
        self._set_params(self.best)
        where = ""
        if self.rf is not None and self.cfg.save_model:
            self.save_model()
            where = f"; last good weights (step {self.stopper.best_step}) saved in {self.rf.root / 'model'}"
        raise TrainingError(f"non-finite training loss at step {self.step + 1} (learning rate {self.lr:g} "
                            f"too large?){where}")

    # ------------------------------------------------------------------ run folder, checkpoints, logs

    def _open_run(self) -> FinetuneResult | None:
        """Claim the run folder (rank 0); a finished run is returned as it is (nothing is rewritten)."""
        if self.out is None:
            return None
        status: tuple[str, Any] = ("fresh", None)
        if self.rf is not None:
            try:
                resumed = self.rf.open()
            except NtkftError as e:  # tell the other ranks before giving up, so none of them waits forever
                self.ranks.broadcast(("error", str(e)))
                raise
            if resumed and self.rf.complete and (self.rf.root / "result.json").is_file():
                log.info("%s: finished run with the same key; returning its result", self.rf.root)
                status = ("done", json.loads((self.rf.root / "result.json").read_text()))
            elif resumed:
                status = ("resume", None)
            else:
                self.rf.write_json("config.json", self.cfg.model_dump())
        status = self.ranks.broadcast(status)
        if status[0] == "error":
            raise ConfigError(status[1])
        if status[0] == "done":
            return FinetuneResult(**status[1])  # type: ignore[arg-type]
        if status[0] == "resume" and self.try_resume():
            log.info("resumed from step %d", self.step)
        if self.rf is None:
            return None
        self.rf.write_text("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("--tensorboard needs `pip install tensorboard`") from None
            self.writer = SummaryWriter(str(self.rf.path("tb")))
        return None

    def _close_run(self, res: FinetuneResult) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.rf is None:
            return
        if self.cfg.save_model:
            self.save_model()
        self.rf.write_json("result.json", res.to_dict())
        if (self.rf.root / "state").exists():
            self.rf.remove("state")  # the result is complete; the resumable state is no longer needed
        self.rf.finish(model=self.cfg.model, task=self.cfg.task, setting=self.cfg.setting, seconds=round(res.seconds, 2))

    def save_state(self) -> None:
        """One atomic checkpoint of everything a resumed run needs."""
        if self.rf is None:
            return
        optim = {"opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []}
        write_checkpoint(self.rf, self.step, {n: p.detach() for n, p in self.params.items()}, self.best, optim,
                         {"step": self.step, "stopper": self.stopper.state_dict(), "history": self.history,
                          "drift": self.drift})

    def try_resume(self) -> bool:
        """Load the newest whole checkpoint of this run (the folder's key already matched)."""
        if self.out is None:
            return False
        ck = read_checkpoint(self.out)
        if ck is None:
            return False
        trainable, best, blob, meta = ck
        self._set_params(trainable)
        self.best = best
        self.opt.load_state_dict(blob["opt"])
        self.sched.load_state_dict(blob["sched"])
        torch.set_rng_state(blob["rng"])
        if blob.get("cuda_rng"):
            torch.cuda.set_rng_state_all(blob["cuda_rng"])
        self.step, self.history, self.drift = meta["step"], meta["history"], meta["drift"]
        self.at = self.step
        self.stopper.load_state_dict(meta["stopper"])
        return True

    def save_model(self) -> None:
        """OUT/model: a Hugging Face directory (safetensors) + head.safetensors + ntkft.json."""
        from ..models.checkpoint import save_finetuned

        assert self.rf is not None
        info = {"setting": self.cfg.setting, "layers": self.cfg.layers, "task": self.cfg.task,
                "base_model": self.cfg.model, "kind": self.loaded.kind, "out_dim": int(self.model.out_dim),
                "weights_fingerprint": self.rf.key["weights"]}
        readout = readout_of(self.model)
        head = readout.head
        before = head.weight.detach().clone(), head.bias.detach().clone()
        try:
            with torch.no_grad():  # the saved head predicts in the targets' units: scale * (w.h + b) + shift
                head.weight.mul_(self.scale)
                head.bias.mul_(self.scale).add_(self.shift)
            save_finetuned(readout, self.loaded.tokenizer, self.rf.path("model"), info)
        finally:
            with torch.no_grad():
                head.weight.copy_(before[0])
                head.bias.copy_(before[1])

    def _log(self, rec: dict) -> None:
        self.history.append(rec)
        if self.rf is not None:
            with open(self.rf.path("metrics.jsonl"), "a") as fh:
                fh.write(json.dumps(rec) + "\n")
        if self.writer is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, rec["step"])

    # ------------------------------------------------------------------ kernel drift (eq 17, 99) and Lemma 1

    def _drift_point(self) -> dict:
        """||K_0 - K_t||_F / ||K_0||_F on the probe set, ||theta_t - theta_PT||, and the linearisation gap."""
        dist = math.sqrt(sum(float((p.detach() - self.theta0[n]).pow(2).sum()) for n, p in self.params.items()))
        point: dict[str, Any] = {"step": self.step, "param_distance": dist}
        if not self.setting.tracks_drift:
            return point
        if self.k0 is None:
            self.k0 = self._kernel_at(self.theta0)
        k = self._kernel_at()
        point["kernel_drift"] = float((k - self.k0).norm() / self.k0.norm())
        point["linearisation_gap"] = self._lin_gap()
        return point

    @torch.no_grad()
    def _lin_gap(self) -> float:
        from torch.func import functional_call, jvp

        x = self.drift_x
        assert x is not None
        ids, mask = (t.to(self.device) for t in trim(x["input_ids"], x["attention_mask"]))
        self.model.eval()
        names = list(self.params)
        theta0 = {n: self.theta0[n] for n in names}
        tangent = {n: self.params[n].detach() - self.theta0[n] for n in names}
        f = lambda p: functional_call(self.model, p, (ids, mask), strict=False)  # noqa: E731
        f0, df = jvp(f, (theta0,), (tangent,))  # type: ignore[misc]
        return float((self.model(ids, mask) - (f0 + df)).abs().mean().cpu())

    def _set_params(self, theta: dict) -> None:
        """Copy `theta` (name -> tensor) into the trainable parameters."""
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(theta[n])

    def _kernel_at(self, theta: dict | None = None) -> torch.Tensor:
        """eNTK on the drift probe set at `theta` (default: the current parameters, left untouched)."""
        cur = None
        if theta is not None:
            cur = {n: p.detach().clone() for n, p in self.params.items()}
            self._set_params(theta)
        assert self.drift_x is not None
        k = kernel_matrix(self.model, self.drift_x, params="all", progress=False)
        if cur is not None:
            self._set_params(cur)
        c = getattr(self.model, "out_dim", 1)
        return trace_outputs(k, c) if c > 1 else k


def finetune(cfg: FinetuneConfig, out: str | Path | None = None, data_dir: str | None = None,
             progress: bool = True, overwrite: bool = False) -> FinetuneResult:
    """Fine-tune one configuration with hold-out early stopping; resumes a killed run in `out` with the same key."""
    return Trainer(cfg, out, data_dir, progress, overwrite).fit()
