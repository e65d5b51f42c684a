"""The fine-tuning loop: full-batch GD or mini-batch AdamW, hold-out early stopping with best-weight
restore, optional kernel-drift tracking, resumable state, HF-directory checkpoints."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._io import run_meta, save_tensors, write_json
from ..errors import ConfigError, NtkftError
from ..kernel import kernel_matrix, trace_outputs
from ..kernel._common import trim
from ..models import load_model
from ..tasks import encode, get_spec, holdout, load_task, subsample, task_metrics
from .config import FinetuneConfig
from .early_stopping import EarlyStopping
from .models import Linearized, build, trainable

log = logging.getLogger(__name__)


class TrainingError(NtkftError):
    """Training hit a non-finite loss; the last good checkpoint was kept."""


@dataclass
class FinetuneResult:
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

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Split:
    ids: torch.Tensor
    mask: torch.Tensor
    y: torch.Tensor
    h: torch.Tensor | None = None  # cached frozen-backbone features (probe setting)


def _split(tok, kind, data, max_length, task_type) -> Split:
    enc = encode(tok, kind, data, max_length=max_length)
    y = torch.as_tensor(data.labels, dtype=torch.float32 if task_type == "regression" else torch.long)
    return Split(enc["input_ids"], enc["attention_mask"], y)


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
        frac = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        frac = min(max(frac, 0.0), 1.0)
        return 1.0 - frac if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
    return f


class Trainer:
    """Runs one fine-tuning configuration; `fit()` returns a FinetuneResult and writes `out`."""

    def __init__(self, cfg: FinetuneConfig, out: str | Path | None = None, data_dir: str | None = None,
                 progress: bool = True) -> None:
        self.cfg, self.out, self.progress = cfg, Path(out) if out else None, progress
        spec = get_spec(cfg.task)
        self.task_type = spec.type
        full = subsample(load_task(spec, "train", data_dir), cfg.n_train, seed=cfg.seed)
        train, val = holdout(full, cfg.val, seed=cfg.seed)
        if len(val) == 0:
            raise ConfigError("the validation split is empty")
        test_all = load_task(spec, spec.test_split, data_dir)
        test = subsample(test_all, min(cfg.n_test, len(test_all)) if cfg.n_test else None, seed=cfg.seed)
        self.num_classes = train.num_classes
        if self.task_type == "classification" and len(np.unique(train.labels)) < 2:
            raise ConfigError(f"task '{spec.name}': the training split has only one class")
        self.loaded = load_model(cfg.model)
        out_dim = 1 if self.task_type == "regression" else self.num_classes
        cuda = torch.cuda.is_available()
        if cfg.device == "cuda" and not cuda:
            raise ConfigError("device 'cuda' asked for, but no CUDA device is available")
        if cfg.bf16 and not (cuda and cfg.device != "cpu"):
            raise ConfigError("--bf16 is a CUDA autocast option; on CPU ntkft trains in fp32")
        self.device = torch.device("cuda" if cuda and cfg.device != "cpu" else "cpu")
        self.model = build(self.loaded, cfg.setting, out_dim, cfg.layers, cfg.sigma, cfg.seed).to(self.device)
        tok, kind = self.loaded.tokenizer, self.loaded.kind
        self.train = _split(tok, kind, train, cfg.max_length, self.task_type)
        self.val = _split(tok, kind, val, cfg.max_length, self.task_type)
        self.test = _split(tok, kind, test, cfg.max_length, self.task_type)
        if cfg.setting == "probe":  # frozen backbone: compute h(x) once (eval mode), train the head on it
            with torch.no_grad():
                for sp in (self.train, self.val, self.test):
                    sp.h = torch.cat([self.model.features(*(t.to(self.device) for t in
                                                            trim(sp.ids[i:i + 64], sp.mask[i:i + 64])))
                                      for i in range(0, len(sp.y), 64)])
        self.params = trainable(self.model)
        if not self.params:
            raise ConfigError(f"setting '{cfg.setting}' leaves nothing to train")
        self.theta0 = {n: p.detach().clone() for n, p in self.params.items()}
        if cfg.optimizer == "gd":
            self.opt = torch.optim.SGD(self.params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.AdamW(self.params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _schedule(cfg))
        self.monitor = cfg.monitor or "loss"
        mode = cfg.mode or ("min" if self.monitor in ("loss", "mse") else "max")
        self.stopper = EarlyStopping(cfg.patience, cfg.min_delta, mode)
        n = len(self.train.y)
        self.per_step = n if cfg.optimizer == "gd" else min(n, cfg.batch_size * cfg.grad_accum)
        self.steps_per_epoch = max(1, math.ceil(n / self.per_step))
        self.eval_every = cfg.eval_every or self.steps_per_epoch
        self.step, self.history, self.drift = 0, [], []
        self.best = {n: p.detach().clone() for n, p in self.params.items()}
        self.drift_x, self.k0 = None, None
        if cfg.drift_every:
            k = min(cfg.drift_n, len(self.val.y))
            self.drift_x = {"input_ids": self.val.ids[:k], "attention_mask": self.val.mask[:k]}
        self.writer = None

    # ------------------------------------------------------------------ pieces

    def _batch_indices(self, step: int) -> torch.Tensor:
        """Samples of optimiser step `step`: an epoch-seeded permutation, so resume replays the order."""
        n = len(self.train.y)
        if self.cfg.optimizer == "gd":
            return torch.arange(n)
        epoch, pos = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch))
        return perm[pos * self.per_step:(pos + 1) * self.per_step]

    def _forward(self, split: Split, idx: torch.Tensor) -> torch.Tensor:
        if split.h is not None:
            out = self.model.head(split.h[idx].to(self.device))
            return out.squeeze(-1) if self.model.out_dim == 1 else out
        ids, mask = trim(split.ids[idx], split.mask[idx])
        ids, mask = ids.to(self.device), mask.to(self.device)
        if self.cfg.bf16:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.model(ids, mask).float()
        return self.model(ids, mask)

    def _train_step(self) -> float:
        self.model.train()
        idx = self._batch_indices(self.step)
        chunks = idx.split(self.cfg.batch_size)
        self.opt.zero_grad(set_to_none=True)
        total = 0.0
        for ch in chunks:
            out = self._forward(self.train, ch)
            loss = _loss(out, self.train.y[ch].to(self.device), self.task_type) * (len(ch) / len(idx))
            if self.cfg.ridge:
                loss = loss + self.cfg.ridge * self.model.head.weight.pow(2).sum() * (len(ch) / len(idx))
            loss.backward()
            total += float(loss.detach())
        if not math.isfinite(total):
            return total
        self.opt.step()
        self.sched.step()
        self.step += 1
        return total

    @torch.no_grad()
    def predict(self, split: Split) -> torch.Tensor:
        self.model.eval()
        idx = torch.arange(len(split.y))
        outs = [self._forward(split, idx[i:i + 64]) for i in range(0, len(split.y), 64)]
        return torch.cat(outs).float().cpu()

    def evaluate(self, split: Split) -> dict:
        out = self.predict(split)
        loss = float(_loss(out, split.y, self.task_type))
        if not math.isfinite(loss):
            return {"loss": loss}
        pred = out.reshape(-1).numpy() if self.task_type == "regression" else out.numpy()
        return {"loss": loss, **task_metrics(self.task_type, pred, split.y.numpy(), self.num_classes or 2)}

    def _drift_point(self) -> dict:
        """||K_0 - K_t||_F / ||K_0||_F on the probe set, ||theta_t - theta_PT||, and the linearisation gap."""
        dist = math.sqrt(sum(float((p.detach() - self.theta0[n]).pow(2).sum()) for n, p in self.params.items()))
        point = {"step": self.step, "param_distance": dist}
        if isinstance(self.model, Linearized):
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
        ids, mask = (t.to(self.device) for t in trim(x["input_ids"], x["attention_mask"]))
        self.model.eval()
        names = list(self.params)
        theta0 = {n: self.theta0[n] for n in names}
        tangent = {n: self.params[n].detach() - self.theta0[n] for n in names}
        f = lambda p: functional_call(self.model, p, (ids, mask), strict=False)  # noqa: E731
        f0, df = jvp(f, (theta0,), (tangent,))
        ft = self.model(ids, mask)
        return float((ft - (f0 + df)).abs().mean().cpu())

    # ------------------------------------------------------------------ state on disk

    def _digest(self) -> str:
        d = self.cfg.model_dump(exclude={"max_steps", "patience", "save_every", "tensorboard", "save_model"})
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def save_state(self) -> None:
        if self.out is None:
            return
        st = self.out / "state"
        st.mkdir(parents=True, exist_ok=True)
        save_tensors(st / "trainable.safetensors", {n: p.detach() for n, p in self.params.items()})
        save_tensors(st / "best.safetensors", self.best)
        tmp = st / "optimizer.pt.tmp"
        torch.save({"opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []}, tmp)
        tmp.replace(st / "optimizer.pt")
        write_json(st / "trainer_state.json", {"digest": self._digest(), "step": self.step,
                                               "stopper": self.stopper.state_dict(), "history": self.history,
                                               "drift": self.drift})

    def try_resume(self) -> bool:
        st = self.out / "state" if self.out else None
        if st is None or not (st / "trainer_state.json").exists():
            return False
        meta = json.loads((st / "trainer_state.json").read_text())
        if meta.get("digest") != self._digest():
            log.warning("%s holds a run of another configuration; starting over", st)
            return False
        from safetensors.torch import load_file

        self._set_params(load_file(st / "trainable.safetensors"))
        self.best = load_file(st / "best.safetensors")
        blob = torch.load(st / "optimizer.pt", weights_only=True, map_location="cpu")
        self.opt.load_state_dict(blob["opt"])
        self.sched.load_state_dict(blob["sched"])
        torch.set_rng_state(blob["rng"])
        if blob.get("cuda_rng"):
            torch.cuda.set_rng_state_all(blob["cuda_rng"])
        self.step, self.history, self.drift = meta["step"], meta["history"], meta["drift"]
        self.stopper.load_state_dict(meta["stopper"])
        log.info("resumed from step %d", self.step)
        return True

    def save_model(self, path: Path) -> None:
        """A Hugging Face directory (safetensors) with the fine-tuned backbone, plus the head."""
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        base = self.model.base if isinstance(self.model, Linearized) else self.model
        pt = None
        if isinstance(self.model, Linearized):  # save theta_PT + delta, the weights f_lin stands for
            theta = self.model.theta()
            pt = {n: p.detach().clone() for n, p in base.named_parameters()}
            with torch.no_grad():
                for n, p in base.named_parameters():
                    p.copy_(theta[n])
        base.backbone.save_pretrained(tmp, safe_serialization=True)
        self.loaded.tokenizer.save_pretrained(tmp)
        save_tensors(tmp / "head.safetensors", {"weight": base.head.weight.detach(), "bias": base.head.bias.detach()})
        write_json(tmp / "ntkft.json", {"setting": self.cfg.setting, "layers": self.cfg.layers, "task": self.cfg.task,
                                        "base_model": self.cfg.model, "kind": self.loaded.kind,
                                        "out_dim": int(base.out_dim)})
        if pt is not None:
            with torch.no_grad():
                for n, p in base.named_parameters():
                    p.copy_(pt[n])
        shutil.rmtree(path, ignore_errors=True)
        tmp.replace(path)

    def _log(self, rec: dict) -> None:
        self.history.append(rec)
        if self.out is not None:
            with open(self.out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(rec) + "\n")
        if self.writer is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, rec["step"])

    # ------------------------------------------------------------------ main loop

    def fit(self) -> FinetuneResult:
        cfg = self.cfg
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / "config.json", cfg.model_dump())
            resumed = self.try_resume()
            if not resumed:
                (self.out / "metrics.jsonl").unlink(missing_ok=True)
            else:  # rewrite the log from the saved history so a kill leaves no duplicate lines
                (self.out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.history))
            if cfg.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    raise ConfigError("--tensorboard needs `pip install tensorboard`") from None
                self.writer = SummaryWriter(str(self.out / "tb"))
        if self.step == 0:
            torch.manual_seed(cfg.seed)  # dropout draws (all devices); a resumed run restores the saved state
        if cfg.drift_every and not self.drift:
            self.drift.append(self._drift_point())
        t0, seen = time.time(), 0
        stop = self.stopper.reason != "" and self.step > 0
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not self.progress, desc=f"{cfg.setting} {cfg.task}")
        while not stop and self.step < cfg.max_steps:
            loss = self._train_step()
            seen += self.per_step
            if not math.isfinite(loss):
                self._restore_best()
                where = ""
                if self.out is not None and cfg.save_model:
                    self.save_model(self.out / "model")
                    where = f"; last good weights (step {self.stopper.best_step}) saved in {self.out / 'model'}"
                raise TrainingError(f"non-finite training loss at step {self.step + 1} (learning rate {cfg.lr:g} "
                                    f"too large?){where}")
            bar.update(1)
            if self.step % self.eval_every == 0 or self.step == cfg.max_steps:
                val = self.evaluate(self.val)
                value = val.get(self.monitor, float("nan"))
                improved, stop = self.stopper.update(value, self.step)
                if improved:
                    self.best = {n: p.detach().clone() for n, p in self.params.items()}
                rec = {"step": self.step, "train_loss": loss, "lr": self.sched.get_last_lr()[0],
                       **{f"val_{k}": v for k, v in val.items()}}
                self._log(rec)
                bar.set_postfix(loss=f"{loss:.4f}", val=f"{value:.4f}")
                if cfg.drift_every and self.step % cfg.drift_every == 0:
                    self.drift.append(self._drift_point())
                self.save_state()
            elif cfg.save_every and self.step % cfg.save_every == 0:
                self.save_state()
        bar.close()
        seconds = time.time() - t0
        reason = self.stopper.reason or f"reached max_steps={cfg.max_steps}"
        test_last = self.evaluate(self.test)
        stopped = self.step
        self._restore_best()
        val_best, test_best = self.evaluate(self.val), self.evaluate(self.test)
        res = FinetuneResult(cfg.model_dump(), self.stopper.best_step, stopped, reason, self.stopper.best,
                             self.monitor, val_best, test_best, test_last, seconds,
                             seen / seconds if seconds > 0 else float("nan"), self.history, self.drift)
        if self.out is not None:
            self.save_state()
            if cfg.save_model:
                self.save_model(self.out / "model")
            write_json(self.out / "result.json", res.to_dict())
            write_json(self.out / "meta.json", run_meta(model=cfg.model, task=cfg.task, setting=cfg.setting,
                                                        seconds=round(seconds, 2)))
        if self.writer is not None:
            self.writer.close()
        return res

    def _set_params(self, theta: dict) -> None:
        """Copy `theta` (name -> tensor) into the trainable parameters."""
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(theta[n])

    def _restore_best(self) -> None:
        self._set_params(self.best)

    def _kernel_at(self, theta: dict | None = None) -> torch.Tensor:
        """eNTK on the drift probe set at `theta` (default: the current parameters, left untouched)."""
        cur = None
        if theta is not None:
            cur = {n: p.detach().clone() for n, p in self.params.items()}
            self._set_params(theta)
        k = kernel_matrix(self.model, self.drift_x, params="all", progress=False)
        if cur is not None:
            self._set_params(cur)
        c = getattr(self.model, "out_dim", 1)
        return trace_outputs(k, c) if c > 1 else k


def finetune(cfg: FinetuneConfig, out: str | Path | None = None, data_dir: str | None = None,
             progress: bool = True) -> FinetuneResult:
    """Fine-tune one configuration with hold-out early stopping; resumes from `out/state` if present."""
    return Trainer(cfg, out, data_dir, progress).fit()
