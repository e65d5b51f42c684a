"""One lab unit: pretrain a reference transformer from random init on the source task, fine-tune it by full-batch
GD with eps = eta_0/n on a target task, and measure what the theory predicts along the way.

Measured (docs/theory.md sec. 2-5): ||theta_PT - theta_0|| (B.3 step 1), ||K_0 - K_PT||_F (eq 40),
sup_t ||K_PT - K_t||_F (eq 17/99), the linearisation error sup_t ||f_t - f_lin,t|| with f_lin,t the linearised model
trained by the same GD (= kernel GD on K_PT with step alpha = eta_0, Lemma 1) and the Taylor remainder
f(theta_T) - f_PT - <theta_T - theta_PT, grad f_PT>, and the test error ||f_t - f_tgt||^2 at the RWY time T_hat,
the hold-out time and the oracle time, for the network and for its linearisation.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from ..errors import TrainingError
from ..spectrum import eigenvalues
from ..stopping import estimate_radius, stop_report
from .config import LabConfig
from .model import ReferenceTransformer
from .ntk import entk, kernel_scale
from .tasks import Split, TargetData, Teacher, embedding_table, labelled, make_teacher, sequences
from .units import Curves, DriftPoint, FinetuneMeasures, PretrainMeasures, StopErrors, StopTimes, WidthUnit


@dataclass
class LabData:
    """Everything synthetic a lab run uses, determined by the config's task fields and `data_seed`."""

    embedding: torch.Tensor
    teacher: Teacher
    target_teacher: Teacher
    source: Split
    target: TargetData
    task_corr: float  # correlation of f_src and f_tgt over the target test inputs


def build_data(cfg: LabConfig, n_target: int | None = None) -> LabData:
    """Source and target data of the lab (docs/theory.md sec. 1), seeded by `cfg.data_seed`."""
    s = cfg.data_seed
    emb = embedding_table(cfg.vocab, cfg.embed_dim, s)
    teacher = make_teacher(cfg.vocab, cfg.embed_dim, cfg.seq_len, cfg.teacher_width, cfg.teacher_qk, s + 1, emb)
    ref = sequences(4096, cfg.seq_len, cfg.vocab, "all", torch.Generator().manual_seed(s + 3))
    target = teacher.shifted(cfg.shift, s + 2, ref)
    gen = torch.Generator().manual_seed(s + 4)

    def draw(fn: Teacher, n: int) -> Split:
        return labelled(fn, sequences(n, cfg.seq_len, cfg.vocab, "all", gen), cfg.noise, gen)

    source = draw(teacher, cfg.n_source)
    test = draw(target, cfg.n_test)
    val = draw(target, cfg.n_val)
    train = draw(target, n_target or cfg.n_target)
    corr = float(np.corrcoef(teacher(test.ids).numpy(), test.f.numpy())[0, 1])
    return LabData(emb, teacher, target, source, TargetData(train, val, test), corr)


def student(cfg: LabConfig, width: int, seed: int, emb: torch.Tensor) -> ReferenceTransformer:
    """A randomly initialised reference transformer of width n (float32)."""
    return ReferenceTransformer(cfg.spec(width), seed=seed, embedding=emb)


def snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
    """A detached copy of the model's parameters (to restore or compare later)."""
    return [p.detach().clone() for p in model.parameters()]


def load(model: torch.nn.Module, theta: list[torch.Tensor]) -> None:
    """Copy a parameter snapshot back into the model."""
    with torch.no_grad():
        for p, v in zip(model.parameters(), theta):
            p.copy_(v)


def distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """||a - b||_2 over all parameters (float64)."""
    return math.sqrt(sum(float(((x.double() - y.double()) ** 2).sum()) for x, y in zip(a, b)))


@torch.no_grad()
def predict(model: ReferenceTransformer, ids: torch.Tensor) -> torch.Tensor:
    """Model outputs on inputs, without gradients."""
    out: torch.Tensor = model(ids).squeeze(-1).double()
    return out


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error between predictions and targets."""
    return float(((a.double() - b.double()) ** 2).mean())


def gd_step(model: ReferenceTransformer, ids: torch.Tensor, y: torch.Tensor, lr: float) -> float:
    """One full-batch GD step on (1/2N) sum_i (f(x_i) - y_i)^2; returns the loss before the step."""
    ps = list(model.parameters())
    loss = 0.5 * ((model(ids).squeeze(-1) - y) ** 2).mean()
    if not torch.isfinite(loss):
        raise TrainingError(f"GD diverged (loss {float(loss)}); lower eta0")
    grads = torch.autograd.grad(loss, ps)
    with torch.no_grad():
        for p, g in zip(ps, grads):
            p.sub_(lr * g)
    return float(loss.detach())


def pretrain(cfg: LabConfig, data: LabData, width: int,
             seed: int) -> tuple[ReferenceTransformer, PretrainMeasures, list[torch.Tensor]]:
    """Random init (seed) -> GD on the source task. Returns the model at theta_PT, its measures and theta_0."""
    model = student(cfg, width, seed, data.embedding)
    theta0 = snapshot(model)
    src, lr = data.source, cfg.lr(width)
    y = src.y.float()
    first = mse(predict(model, src.ids), src.y)
    for _ in range(cfg.pretrain_steps):
        gd_step(model, src.ids, y, lr)
    info = PretrainMeasures(
        n_params=sum(p.numel() for p in theta0), source_mse_init=first, source_mse_pt=mse(predict(model, src.ids), src.y),
        source_fit_pt=mse(predict(model, src.ids), src.f), theta_dist=distance(theta0, snapshot(model)),
        theta0_norm=distance(theta0, [0 * t for t in theta0]))
    return model, info, theta0


def holdout_time(curve: list[float], patience: int) -> int:
    """Best step seen before `patience` evaluations in a row fail to improve the validation loss."""
    best, best_t, bad = math.inf, 0, 0
    for t, v in enumerate(curve):
        if v < best:
            best, best_t, bad = v, t, 0
        else:
            bad += 1
            if bad >= patience:
                break
    return best_t


def drift_times(t_max: int, points: int) -> list[int]:
    """Geometric grid of steps ending at t_max, where K_t is recomputed."""
    return sorted({max(1, round(t_max * 2.0 ** -k)) for k in range(points)})


def tangent(model: ReferenceTransformer, theta: list[torch.Tensor], v: list[torch.Tensor],
            ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(theta), <v, grad f(theta)>) on `ids` in float64; the JVP by double backward: d/dw <J^T w, v> = J v."""
    m = copy.deepcopy(model).double()
    load(m, theta)
    ps = list(m.parameters())
    with torch.enable_grad():
        f = m(ids).squeeze(-1)
        w = torch.zeros_like(f, requires_grad=True)
        jt_w = torch.autograd.grad((f * w).sum(), ps, create_graph=True)  # scalar outputs: no grad_outputs,
        inner = cast(torch.Tensor, sum((g * t.double()).sum() for g, t in zip(jt_w, v)))  # which import sympy
        (jv,) = torch.autograd.grad(inner, w)
    return f.detach(), jv.detach()


def taylor_remainder(model: ReferenceTransformer, theta_a: list[torch.Tensor], theta_b: list[torch.Tensor],
                     ids: torch.Tensor) -> torch.Tensor:
    """f(theta_b) - f(theta_a) - <theta_b - theta_a, grad f(theta_a)> on `ids`, in float64 (Lemma 1's error e)."""
    fa, lin = tangent(model, theta_a, [b.double() - a.double() for a, b in zip(theta_a, theta_b)], ids)
    m = copy.deepcopy(model).double()
    load(m, theta_b)
    return predict(m, ids) - fa - lin


class LinearisedGD:
    """The linearised model f_PT + <theta - theta_PT, grad f_PT> trained by the same full-batch GD: kernel GD on K_PT
    (width-normalised, eq 37) with step alpha = eta_0, in closed form (docs/theory.md sec. 5). Unlike `KernelGD` it
    accepts any step, so a sweep records alpha > min(1, 1/lambda_1) instead of stopping."""

    def __init__(self, k_train: torch.Tensor, y: torch.Tensor, f0: torch.Tensor, step: float) -> None:
        n = k_train.shape[0]
        lams, u = np.linalg.eigh(k_train.numpy() / n)
        self.lams, self.u, self.n, self.step = np.clip(lams, 0.0, None), u, n, step
        self.proj = u.T @ (y.numpy() - f0.numpy())

    def predict(self, k_cross: torch.Tensor, f0: torch.Tensor, t: int) -> torch.Tensor:
        """f_lin,t on new inputs from K(X_new, X_train) and f_PT(X_new)."""
        q = 1.0 - (1.0 - self.step * self.lams) ** t
        ratio = np.divide(q, self.lams, out=np.full_like(q, float(t) * self.step), where=self.lams > 1e-12 * self.lams[-1])
        return f0 + torch.from_numpy(k_cross.numpy() @ (self.u @ (ratio * self.proj)) / self.n)


def finetune(cfg: LabConfig, model: ReferenceTransformer, data: TargetData,
             steps: int | None = None) -> tuple[FinetuneMeasures, dict[str, torch.Tensor]]:
    """GD on the target train split from the current weights (theta_PT), measuring drift, linearisation and errors.
    Returns (metrics, tensors); the model ends at theta_T."""
    width, steps = model.spec.width, steps or cfg.finetune_steps
    tr, va, te = data.train, data.val, data.test
    n, v = len(tr), len(va)
    scale = kernel_scale(model)
    theta_pt = snapshot(model)
    k_all = entk(model, torch.cat([tr.ids, va.ids, te.ids])) * scale
    k_tr, k_te = k_all[:n, :n], k_all[n + v:, :n]
    f_pt = predict(model, torch.cat([tr.ids, va.ids, te.ids]))
    f_pt_tr, f_pt_te = f_pt[:n], f_pt[n + v:]
    lin = LinearisedGD(k_tr, tr.y, f_pt_tr, cfg.eta0)
    radius = estimate_radius(k_tr.numpy(), (tr.f - f_pt_tr).numpy())
    rule = stop_report(k_tr.numpy(), tr.y.numpy(), f_pt_tr.numpy(), step=cfg.eta0, sigma=cfg.noise, radius=radius)
    rule_est = stop_report(k_tr.numpy(), tr.y.numpy(), f_pt_tr.numpy(), step=cfg.eta0)
    eval_ids, y_tr = torch.cat([va.ids, te.ids]), tr.y.float()
    lr, dts = cfg.lr(width), set(drift_times(steps, cfg.drift_points))
    curves: dict[str, list[float]] = {k: [] for k in ("train", "val", "test", "lin_test", "lin_diff")}
    drift: list[DriftPoint] = []
    for t in range(steps + 1):
        loss = gd_step(model, tr.ids, y_tr, lr) if t > 0 else None
        if loss is not None:
            curves["train"].append(2 * loss)  # mse at the weights before this step
        f_eval = predict(model, eval_ids)
        f_lin = lin.predict(k_te, f_pt_te, t)
        curves["val"].append(mse(f_eval[:v], va.y))
        curves["test"].append(mse(f_eval[v:], te.f))
        curves["lin_test"].append(mse(f_lin, te.f))
        curves["lin_diff"].append(math.sqrt(mse(f_eval[v:], f_lin)))
        if t in dts:
            k_t = entk(model, tr.ids) * scale
            diff = float(torch.linalg.norm(k_t - k_tr))
            drift.append(DriftPoint(t=t, abs=diff / n, rel=diff / float(torch.linalg.norm(k_tr))))
    times = StopTimes(t_hat=min(rule.t_hat, steps), t_hat_est=min(rule_est.t_hat, steps),
                      holdout=holdout_time(curves["val"], cfg.patience), oracle=int(np.argmin(curves["test"])))
    taylor = taylor_remainder(model, theta_pt, snapshot(model), te.ids)
    lams = eigenvalues(k_tr)

    def errors(t: int) -> StopErrors:
        net, lin_t = curves["test"][t], curves["lin_test"][t]
        return StopErrors(net=net, lin=lin_t, gap=abs(net - lin_t), diff_rms=curves["lin_diff"][t])

    out = FinetuneMeasures(
        lambda_1=float(lams[0]), step_ok=bool(cfg.eta0 <= min(1.0, 1.0 / lams[0])), radius_oracle=radius,
        rule=rule, rule_estimated=rule_est, t_hat_capped=rule.t_hat > steps, times=times, steps=steps,
        theta_dist_ft=distance(theta_pt, snapshot(model)), drift=drift,
        drift_sup_abs=max(d.abs for d in drift), drift_sup_rel=max(d.rel for d in drift),
        lin_sup=max(curves["lin_diff"]), taylor_rms=math.sqrt(float((taylor ** 2).mean())),
        pt_test_mse=curves["test"][0], curves=Curves(**curves), err_t_hat=errors(times.t_hat),
        err_t_hat_est=errors(times.t_hat_est), err_holdout=errors(times.holdout), err_oracle=errors(times.oracle))
    return out, {"K_PT": k_tr, "eigenvalues": torch.from_numpy(lams.copy())}


def width_unit(cfg: LabConfig, data: LabData, width: int, seed: int) -> tuple[WidthUnit, dict[str, torch.Tensor]]:
    """Pretrain + fine-tune at one (width, seed); its record and the kernels K_0, K_PT on the target train inputs."""
    model, info, theta0 = pretrain(cfg, data, width, seed)
    theta_pt = snapshot(model)
    load(model, theta0)
    scale = kernel_scale(model)
    k0 = entk(model, data.target.train.ids) * scale
    load(model, theta_pt)
    ft, tensors = finetune(cfg, model, data.target)
    kpt = tensors["K_PT"]
    unit = WidthUnit(**dict(info), **dict(ft), width=width, seed=seed,
                     kernel_init_to_pt_rel=float(torch.linalg.norm(kpt - k0) / torch.linalg.norm(kpt)))
    return unit, {"K0": k0, "K_PT": kpt, "eigenvalues": tensors["eigenvalues"]}
