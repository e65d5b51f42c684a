"""Kernel gradient descent on the eNTK: the linearised model's exact learning curve (docs/theory.md sec. 4-5).

One kernel per (model, task, seed) on a nested pool of training rows plus a test sample (`curves.kgd_kernels`,
a unit of stage 2); a training size n uses the pool's first n rows, split like fine-tuning into train and
hold-out. The path is evaluated in closed form on a log-spaced grid of steps; t is chosen on the hold-out
rows (as fine-tuning stops), and the oracle t (best test MSE) and the RWY rule's T_hat are read off the same
path."""

from __future__ import annotations

import numpy as np
import torch

from .._results import ResultModel
from ..spectrum.eig import eigh_desc
from ..tasks import task_metrics


def targets(labels: np.ndarray, task_type: str) -> np.ndarray:
    """Regression scores as they are; binary classes as -1/+1 (kernel regression on the labels)."""
    y = np.asarray(labels, dtype=np.float64)
    return y if task_type == "regression" else 2.0 * y - 1.0


def units(y_train: np.ndarray, task_type: str) -> tuple[float, float]:
    """(shift, scale) of the training units: regression targets standardised as fine-tuning does
    (FinetuneConfig.standardize), so f_PT, the model's output, is read in those units; classes unchanged."""
    if task_type != "regression":
        return 0.0, 1.0
    return float(y_train.mean()), float(y_train.std()) or 1.0


def t_grid(t_max: int, points: int = 90) -> np.ndarray:
    """0 and a log-spaced grid of step counts up to t_max."""
    return np.unique(np.concatenate([[0], np.round(np.logspace(0, np.log10(t_max), points)).astype(np.int64)]))


class KgdPoint(ResultModel):
    """Kernel GD at one training size: where hold-out, the oracle and RWY stop, and the test metrics there."""

    size: int
    seed: int
    n_train: int
    n_val: int
    step: float  # alpha on K/N (1/lambda_1)
    t_holdout: int
    t_oracle: int
    test_holdout: dict[str, float]  # task metrics + 'mse_target' (MSE on the regression targets) at t_holdout
    test_oracle: dict[str, float]
    test_init: dict[str, float]  # at t = 0: f_PT itself
    var_test: float  # variance of the test targets
    model: str = ""  # the plan and task of the curve (set by stage 2)
    task: str = ""


def split_pool(n: int, val: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the pool prefix of size n: (train, hold-out), hold-out = the last round(val * n) rows."""
    n_val = max(1, int(round(val * n)))
    return np.arange(n - n_val), np.arange(n - n_val, n)


class KgdPath:
    """Closed-form kernel GD from f_PT on one training set, evaluated on any rows of the cross kernel. The path
    runs in training units y_train = (y - shift) / scale (see `units`); predictions come back in y's units."""

    def __init__(self, k_train: np.ndarray, y: np.ndarray, f0: np.ndarray, shift: float = 0.0,
                 scale: float = 1.0) -> None:
        self.n, self.shift, self.scale = len(y), shift, scale
        self.y_train = (y - shift) / scale
        self.lams, self.u = eigh_desc(k_train)
        self.alpha = 1.0 / self.lams[0] if self.lams[0] > 1 else 1.0
        self.proj = self.u.T @ (self.y_train - f0)

    def coefs(self, ts: np.ndarray) -> np.ndarray:
        """(N, T): c_t with f^t(x) = f0(x) + K(x, X) c_t."""
        q = 1.0 - (1.0 - self.alpha * self.lams[None, :]) ** ts[:, None].astype(np.float64)
        ratio = np.divide(q, self.lams[None, :], out=np.zeros_like(q), where=self.lams[None, :] > 0)
        out: np.ndarray = self.u @ (ratio * self.proj[None, :]).T / self.n
        return out

    def predict(self, k_cross: np.ndarray, f0: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """(M, T) predictions along the path, in y's units."""
        out: np.ndarray = (f0[:, None] + k_cross @ self.coefs(ts)) * self.scale + self.shift
        return out


def metrics(pred: np.ndarray, y_target: np.ndarray, labels: np.ndarray, task_type: str) -> dict[str, float]:
    """Task metrics of one prediction vector (classes by sign), plus the MSE on the regression targets."""
    out = {"mse_target": float(np.mean((pred - y_target) ** 2))}
    if task_type == "regression":
        out.update(task_metrics("regression", pred, labels))
    else:
        out.update(task_metrics("classification", (pred > 0).astype(np.int64), labels.astype(np.int64), 2))
    return out


def start(unit: dict[str, torch.Tensor], yp: np.ndarray, tr: np.ndarray, task_type: str,
          center: bool) -> tuple[np.ndarray, np.ndarray]:
    """f_0 on the pool and the test rows in training units: f_PT, or with `center` the constant predictor (the
    training targets' mean, 0 once standardised; the mean of the -1/+1 classes), as centred fine-tuning starts."""
    fp, ft = unit["f_pool"].numpy(), unit["f_test"].numpy()
    if not center:
        return fp, ft
    shift, scale = units(yp[tr], task_type)
    c = float(np.mean((yp[tr] - shift) / scale))
    return np.full_like(fp, c), np.full_like(ft, c)


def curve(unit: dict[str, torch.Tensor], sizes: list[int], val: float, task_type: str, seed: int,
          t_max: int, center: bool = False) -> list[KgdPoint]:
    """The kernel-GD learning curve of one unit over `sizes` (nested prefixes of the pool), from f_PT or, with
    `center`, from the constant predictor."""
    kp, kt = unit["K_pool"].numpy(), unit["K_test_pool"].numpy()
    lab_p, lab_t = unit["y_pool"].numpy(), unit["y_test"].numpy()
    yp, yt = targets(lab_p, task_type), targets(lab_t, task_type)
    ts = t_grid(t_max)
    out = []
    for n in sizes:
        tr, va = split_pool(n, val)
        fp, ft = start(unit, yp, tr, task_type, center)
        path = KgdPath(kp[np.ix_(tr, tr)], yp[tr], fp[tr], *units(yp[tr], task_type))
        val_mse = ((path.predict(kp[np.ix_(va, tr)], fp[va], ts) - yp[va][:, None]) ** 2).mean(0)
        test_pred = path.predict(kt[:, tr], ft, ts)
        test_mse = ((test_pred - yt[:, None]) ** 2).mean(0)
        i_val, i_or = int(np.argmin(val_mse)), int(np.argmin(test_mse))
        out.append(KgdPoint(size=n, seed=seed, n_train=len(tr), n_val=len(va), step=float(path.alpha),
                            t_holdout=int(ts[i_val]), t_oracle=int(ts[i_or]),
                            test_holdout=metrics(test_pred[:, i_val], yt, lab_t, task_type),
                            test_oracle=metrics(test_pred[:, i_or], yt, lab_t, task_type),
                            test_init=metrics(test_pred[:, 0], yt, lab_t, task_type), var_test=float(np.var(yt))))
    return out
