"""The model being fine-tuned and the rows it is scored on: forward passes, the targets' units, evaluation and the
constant predictor every score is read against. `Predictor.__init__` only checks the config; `setup()` loads the
model and the data (bad data is reported there, before any training), builds the setting's module, caches frozen
features and centres the start. The Trainer (loop.py) is a Predictor with an optimiser and a loop."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..errors import ConfigError
from ..kernel._common import trim
from ..models import LoadedModel, fingerprint, load_model
from ..tasks import task_metrics
from .config import FinetuneConfig
from .data import Prepared, Split, by_length, cache_features, in_row_order, prepare
from .parallel import Ranks, ranks_from_env
from .settings import get_setting, readout_of


def loss_fn(out: torch.Tensor, y: torch.Tensor, task_type: str) -> torch.Tensor:
    """The training objective: mean squared error (regression) or cross-entropy on the logits."""
    if task_type == "regression":
        return torch.mean((out.reshape(-1) - y) ** 2)
    return nn.functional.cross_entropy(out, y)


def _device(cfg: FinetuneConfig) -> torch.device:
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise ConfigError("device 'cuda' asked for, but no CUDA device is available")
    if cfg.bf16 and not (cuda and cfg.device != "cpu"):
        raise ConfigError("--bf16 is a CUDA autocast option; on CPU ntkft trains in fp32")
    return torch.device("cuda" if cuda and cfg.device != "cpu" else "cpu")


class Predictor:
    """f(x) of one fine-tuning configuration on its train / validation / test rows (see the module docstring)."""

    def __init__(self, cfg: FinetuneConfig, data_dir: str | None = None) -> None:
        self.cfg, self.data_dir = cfg, data_dir
        self.setting = get_setting(cfg.setting)
        self.device = _device(cfg)
        self.ranks = Ranks()
        self.ready = False

    def setup(self) -> Predictor:
        """Load model and data, build the module, centre its start (once; returns self)."""
        if self.ready:
            return self
        cfg = self.cfg
        self.ranks = ranks_from_env(self.device)
        if self.ranks.active and self.device.type == "cuda":
            self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
            torch.cuda.set_device(self.device)
        self.loaded: LoadedModel = load_model(cfg.model, pooling=cfg.pooling)
        self.data: Prepared = prepare(cfg, self.loaded, self.data_dir)
        self.task_type, self.num_classes = self.data.task_type, self.data.num_classes
        self.model: Any = self.setting.build(self.loaded, self.data.out_dim, cfg.layers, cfg.sigma, cfg.seed)
        self.model = self.model.to(self.device)
        # regression targets in training units: (y - shift) / scale (0 and 1 unless standardize)
        self.shift, self.scale = 0.0, 1.0
        self.c = torch.zeros(())  # the constant a centred start begins at (center_output), training units
        self.at = 0  # the step whose weights the model holds
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
        self.headline = self.data.spec.metrics[0]  # mse | accuracy: the metric a result is read by
        self.baseline_val, self.baseline_test = self.baseline(self.val), self.baseline(self.test)
        self.ready = True
        return self

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

    # ------------------------------------------------------------------ the start and the constant predictor

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

    def _log_prior(self) -> torch.Tensor:
        """log of the training rows' class frequencies (+0.5 each: no log 0); its argmax is the majority class."""
        counts = torch.bincount(self.train.y.long(), minlength=self.num_classes or 2).double() + 0.5
        return (counts / counts.sum()).log()

    def _constant(self) -> torch.Tensor:
        """The start's constant in training units: the training targets' mean (regression, shape ()), or the log
        class prior as logits (classification; uniform without start_at_prior)."""
        if self.task_type == "regression":
            return self._target(self.train.y.double()).mean()
        return self._log_prior() if self.cfg.start_at_prior else torch.zeros(self.num_classes or 2, dtype=torch.float64)

    def constant_name(self) -> str:
        """The constant predictor in words, e.g. "training mean 2.713" or "majority class 1"."""
        if self.task_type == "regression":
            return f"training mean {float(self.train.y.double().mean()):.4g}"
        i, labels = int(self._log_prior().argmax()), self.data.spec.labels
        return f"majority class {labels[i] if labels and i < len(labels) else i}"

    @property
    def out_dim(self) -> int:
        return int(self.data.out_dim)

    def baseline(self, split: Split) -> dict:
        """The constant predictor's scores on `split`: the training mean (regression) or the majority class (log
        class prior as logits), the same for every row. A fine-tuned model is worth its cost only above it."""
        c = self._units(self._target(self.train.y.double()).mean()) if self.task_type == "regression" \
            else self._log_prior()
        return self._score(split, c.expand(len(split), *c.shape).clone())

    def _offset_start(self) -> None:
        """center_output: remember g_0(x) on every row of every split; f = (g - g_0) + c is then exactly c at step 0
        (the same batches give the same g bit for bit), one value for all rows, so ties in c stay ties."""
        for split in (self.train, self.val, self.test):
            split.g0 = None
            split.g0 = self._outputs(split).to(self.device)
        self.c = self._constant().float().to(self.device)
        for split in (self.val, self.test):  # step 0's evaluation is c on every row: no second forward pass
            const = self.c.cpu().expand(len(split), *self.c.shape).clone()
            self._evals[(id(split), 0)] = self._score(split, self._units(const))

    def feature_step(self) -> float:
        """1 / (2 lambda_max) of the cached features' second moment M = [h, 1]^T [h, 1] / n: the squared loss has
        Hessian 2M, so this is RWY's step bound alpha <= 1/lambda_1 on it (ridge added if set): no oscillation."""
        h = self.train.h
        assert h is not None
        z = torch.cat([h.double(), torch.ones(len(h), 1, dtype=torch.float64, device=h.device)], 1)
        return 1.0 / (2 * (float(torch.linalg.eigvalsh(z.T @ z / len(h))[-1]) + self.cfg.ridge))

    # ------------------------------------------------------------------ forward, units, evaluation

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

    def _target(self, y: torch.Tensor) -> torch.Tensor:
        """Targets in training units (standardised regression targets; classes unchanged)."""
        return (y - self.shift) / self.scale if self.task_type == "regression" else y

    def _units(self, out: torch.Tensor) -> torch.Tensor:
        """Outputs in training units -> the targets' units (regression; class logits unchanged)."""
        return out * self.scale + self.shift if self.task_type == "regression" else out

    @torch.no_grad()
    def _outputs(self, split: Split) -> torch.Tensor:
        """f on every row of `split` in training units, in row order (eval mode; batches of similar length)."""
        self.model.eval()
        parts = list(torch.arange(len(split)).split(64)) if split.h is not None else by_length(split.mask, 64)
        return in_row_order(parts, [self._forward(split, ix) for ix in parts]).float().cpu()

    def predict(self, split: Split) -> torch.Tensor:
        """Predictions in the targets' units (regression) or class logits, in the split's row order."""
        return self._units(self._outputs(split))

    def evaluate(self, split: Split) -> dict:
        """The training objective ("loss", in training units) and the task's metrics (in the targets' units);
        remembered per weights, so the final report at the best and last step reuses the evaluations made then."""
        key = (id(split), self.at)
        if key not in self._evals:
            self._evals[key] = self._evaluate(split)
        return dict(self._evals[key])

    def _evaluate(self, split: Split) -> dict:
        return self._score(split, self.predict(split))

    def _score(self, split: Split, out: torch.Tensor) -> dict:
        """Loss and metrics of predictions `out` (targets' units) on `split`."""
        loss = float(loss_fn(self._target(out), self._target(split.y), self.task_type))
        if not math.isfinite(loss):
            return {"loss": loss}
        pred = out.reshape(-1).numpy() if self.task_type == "regression" else out.numpy()
        return {"loss": loss, **task_metrics(self.task_type, pred, split.y.numpy(), self.num_classes or 2)}

    def _set_params(self, theta: dict) -> None:
        """Copy `theta` (name -> tensor) into the trainable parameters."""
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(theta[n])

    def save_model(self, path: Path, weights: str) -> None:
        """`path`: a Hugging Face directory (safetensors) + head.safetensors + ntkft.json."""
        from ..models.checkpoint import save_finetuned

        info = {"setting": self.cfg.setting, "layers": self.cfg.layers, "task": self.cfg.task,
                "base_model": self.cfg.model, "kind": self.loaded.kind, "out_dim": int(self.model.out_dim),
                "weights_fingerprint": weights}
        readout = readout_of(self.model)
        head = readout.head
        before = head.weight.detach().clone(), head.bias.detach().clone()
        try:
            with torch.no_grad():  # the saved head predicts in the targets' units: scale * (w.h + b) + shift
                head.weight.mul_(self.scale)
                head.bias.mul_(self.scale).add_(self.shift)
            save_finetuned(readout, self.loaded.tokenizer, path, info)
        finally:
            with torch.no_grad():
                head.weight.copy_(before[0])
                head.bias.copy_(before[1])
