"""Task arithmetic in the lab (Section 5.2, Appendix C; docs/theory.md sec. 7).

Task 1: sequences of A tokens, target = a shifted teacher. Task 2 comes in two designs:
  orthogonal  - sequences of B tokens (embeddings orthogonal to A's), another shifted teacher: the cross-task eNTK
                block vanishes as n -> infinity (Assumption 5.1 by construction);
  overlapping - sequences of A tokens too, the other shifted teacher: the kernels overlap.
Each task is fine-tuned from theta_PT with hold-out early stopping; tau = theta_FT - theta_PT (eq 22). Measured:
addition theta_PT + tau_1 + tau_2 (eq 25) - MSE relative to each single-task model, the disentanglement error xi,
the cross-kernel ratio, the leakage RMS<tau_j, grad f_PT>(task i) / RMS<tau_j, grad f_PT>(task j) (0 under
Assumption 5.1, whatever the size of tau_j), the cosine of the task vectors - and negation theta_PT - tau
(eq 23 corrected): the MSE increase against its linearised value 4 mean(u (f_tgt - f_PT)), u = <tau, grad f_PT>
(Corollary 1, eq 104).
"""

from __future__ import annotations

import math

import torch

from .config import ArithmeticConfig
from .lab import LabData, gd_step, load, mse, predict, pretrain, snapshot, tangent
from .model import ReferenceTransformer
from .ntk import entk, kernel_scale
from .tasks import Split, TargetData, Teacher, labelled, sequences
from .units import ArithDesignMeasures, ArithmeticUnit, ArithTaskMeasures


def arithmetic_tasks(cfg: ArithmeticConfig, data: LabData) -> dict[str, TargetData]:
    """task1 (A tokens), task2_orthogonal (B tokens), task2_overlapping (A tokens); two shifted teachers."""
    ref = sequences(4096, cfg.seq_len, cfg.vocab, "all", torch.Generator().manual_seed(cfg.data_seed + 3))
    t1 = data.teacher.shifted(cfg.shift, cfg.data_seed + 11, ref)
    t2 = data.teacher.shifted(cfg.shift, cfg.data_seed + 12, ref)
    gen = torch.Generator().manual_seed(cfg.data_seed + 13)

    def task(fn: Teacher, which: str) -> TargetData:
        def draw(n: int) -> Split:
            return labelled(fn, sequences(n, cfg.seq_len, cfg.vocab, which, gen), cfg.noise, gen)

        return TargetData(draw(cfg.n_target), draw(cfg.n_val), draw(cfg.n_test))

    return {"task1": task(t1, "A"), "task2_orthogonal": task(t2, "B"), "task2_overlapping": task(t2, "A")}


def finetune_holdout(cfg: ArithmeticConfig, model: ReferenceTransformer, task: TargetData) -> tuple[list[torch.Tensor], int]:
    """GD from the current weights with hold-out early stopping (stop after `patience` steps without a better
    validation loss); returns the best-validation weights and their step."""
    lr, y = cfg.lr(model.spec.width), task.train.y.float()
    best, best_t, best_theta = math.inf, 0, snapshot(model)
    for t in range(cfg.finetune_steps + 1):
        if t > 0:
            gd_step(model, task.train.ids, y, lr)
        val = mse(predict(model, task.val.ids), task.val.y)
        if val < best:
            best, best_t, best_theta = val, t, snapshot(model)
        elif t - best_t >= cfg.patience:
            break
    return best_theta, best_t


def _tangent(model: ReferenceTransformer, theta: list[torch.Tensor], tau: list[torch.Tensor],
             ids: torch.Tensor) -> torch.Tensor:
    """u = <tau, grad f(theta)> on ids (float64)."""
    return tangent(model, theta, tau, ids)[1]


def _at(model: ReferenceTransformer, theta: list[torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    load(model, theta)
    return predict(model, ids)


RANKS = (1, 2, 4, 8, 16, 32)


def cross_kernel(model: ReferenceTransformer, a: Split, b: Split) -> tuple[float, dict[int, float]]:
    """||K_12||_F / sqrt(||K_11||_F ||K_22||_F) on the two training sets (Assumption 5.1: 0), and the leakage by
    eigendirection: ||K_ij u_k|| / ||K_jj u_k|| = ||K_ij u_k|| / lambda_k for the eigenvectors u_k of K_jj, averaged
    over the band k in [r, 2r) and over i != j: how much fitting task j's k-th kernel direction moves task i."""
    k = entk(model, torch.cat([a.ids, b.ids])) * kernel_scale(model)
    n = len(a)
    k11, k22, k12 = k[:n, :n], k[n:, n:], k[:n, n:]
    ratio = float(torch.linalg.norm(k12) / torch.sqrt(torch.linalg.norm(k11) * torch.linalg.norm(k22)))
    per_dir = []
    for own, cross in ((k22, k12), (k11, k12.T)):
        lam, u = torch.linalg.eigh(own)
        lam, u = lam.flip(0), u.flip(1)
        per_dir.append(torch.linalg.norm(cross @ u, dim=0) / lam.clamp_min(1e-12 * float(lam[0])))
    per_dir = (per_dir[0] + per_dir[1]) / 2
    by_band = {r: float(per_dir[r - 1:min(2 * r - 1, n)].mean()) for r in RANKS if r <= n}
    return ratio, by_band


def cross_kernel_ratio(model: ReferenceTransformer, a: Split, b: Split) -> float:
    """||K_12||_F / sqrt(||K_11||_F ||K_22||_F) (Assumption 5.1 measured)."""
    return cross_kernel(model, a, b)[0]


def arithmetic_unit(cfg: ArithmeticConfig, data: LabData, tasks: dict[str, TargetData], width: int,
                    seed: int) -> tuple[ArithmeticUnit, dict[str, torch.Tensor]]:
    """Pretrain, fine-tune the three tasks, and measure addition and negation for both designs."""
    model, info, _ = pretrain(cfg, data, width, seed)
    theta_pt = snapshot(model)
    taus, stops = {}, {}
    for name, task in tasks.items():
        load(model, theta_pt)
        best, stops[name] = finetune_holdout(cfg, model, task)
        taus[name] = [b - p for b, p in zip(best, theta_pt)]
    def add(*ts: list[torch.Tensor]) -> list[torch.Tensor]:
        return [p + sum(x) for p, *x in zip(theta_pt, *ts)]

    designs: dict[str, ArithDesignMeasures] = {}
    for design in ("orthogonal", "overlapping"):
        names = ["task1", f"task2_{design}"]
        tau1, tau2 = taus[names[0]], taus[names[1]]
        flat1, flat2 = torch.cat([t.reshape(-1) for t in tau1]), torch.cat([t.reshape(-1) for t in tau2])
        load(model, theta_pt)
        ratio, by_rank = cross_kernel(model, tasks[names[0]].train, tasks[names[1]].train)
        per_task: dict[str, ArithTaskMeasures] = {}
        xi, mt_nonlin, rms_u = 0.0, [], {}
        for i, (name, tau) in enumerate(zip(names, (tau1, tau2))):
            te = tasks[name].test
            f_pt = _at(model, theta_pt, te.ids)
            f_ft = _at(model, add(tau), te.ids)
            f_mt = _at(model, add(tau1, tau2), te.ids)
            f_neg = _at(model, [p - t for p, t in zip(theta_pt, tau)], te.ids)
            load(model, theta_pt)
            u1, u2 = _tangent(model, theta_pt, tau1, te.ids), _tangent(model, theta_pt, tau2, te.ids)
            u = (u1, u2)[i]
            rms_u[i, 0], rms_u[i, 1] = float(u1.pow(2).mean().sqrt()), float(u2.pow(2).mean().sqrt())
            m_ft, m_neg = mse(f_ft, te.f), mse(f_neg, te.f)
            gap_lin = float(4 * (u * (te.f - f_pt)).mean())
            per_task[name] = ArithTaskMeasures(
                mse_pt=mse(f_pt, te.f), mse_ft=m_ft, mse_mt=mse(f_mt, te.f), mse_mt_lin=mse(f_pt + u1 + u2, te.f),
                mse_neg=m_neg, normalised_mse=mse(f_mt, te.f) / m_ft, neg_gap=m_neg - m_ft, neg_gap_lin=gap_lin,
                neg_rel_dev=abs(m_neg - m_ft - gap_lin) / abs(gap_lin) if gap_lin else None)
            xi += mse(f_ft, f_mt)
            mt_nonlin.append(mse(f_mt, f_pt + u1 + u2))
        # leakage: the linearised change tau_j makes on task i's inputs relative to its change on task j's own inputs
        leakage = (rms_u[0, 1] / rms_u[1, 1] + rms_u[1, 0] / rms_u[0, 0]) / 2 if min(rms_u.values()) > 0 else None
        designs[design] = ArithDesignMeasures(
            cross_kernel_ratio=ratio, **{f"leakage_dir{r}": v for r, v in by_rank.items()},
            tau_cosine=float(flat1 @ flat2 / (flat1.norm() * flat2.norm())), tasks=per_task, disentanglement=xi,
            leakage=leakage, mt_lin_rms=math.sqrt(sum(mt_nonlin) / len(mt_nonlin)),
            normalised_mse_mean=sum(t.normalised_mse for t in per_task.values()) / 2)
    load(model, theta_pt)
    return ArithmeticUnit(width=width, seed=seed, theta_dist=info.theta_dist, stops=stops, designs=designs), {}
