"""`ntkft stop`'s action: T_hat as `ntkft finetune --optimizer gd` steps, and the bound beside the constant predictor."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import run_cli
from ntkft.stopping import finetune_action, stop_report


def _problem(n=40, p=300, seed=0):
    rng = np.random.default_rng(seed)
    j = rng.normal(size=(n, p)) / np.sqrt(p)
    theta = rng.normal(size=p)
    y = j @ theta + 0.3 * rng.normal(size=n)
    return j, y


def test_steps_follow_parameter_gd_on_the_mse():
    """S steps of parameter GD at lr on the mean squared error of the linear model J theta reach the same fitted
    values as T_hat kernel-GD steps of alpha on K/N (alpha = 2 lr): the factor 2 of the action checked directly."""
    j, y = _problem()
    k = j @ j.T
    rep = stop_report(k, y, step=0.01)
    act = finetune_action(rep, y, lr=0.005)
    assert act.max_steps == rep.t_hat  # alpha = 2 lr: one step each
    theta = np.zeros(j.shape[1])
    n = len(y)
    for _ in range(act.max_steps):
        theta -= act.lr * (2 / n) * j.T @ (j @ theta - y)
    lam, u = np.linalg.eigh(k / n)
    kgd = u @ ((1 - (1 - rep.step * lam) ** rep.t_hat) * (u.T @ y))
    np.testing.assert_allclose(j @ theta, kgd, rtol=1e-9, atol=1e-9)
    half = finetune_action(rep, y, lr=0.0025)  # half the lr: twice the steps
    assert half.max_steps == 2 * rep.t_hat
    assert "--lr 0.0025 --max-steps" in half.command


def test_bound_beside_the_constant_predictor():
    j, y = _problem()
    rep = stop_report(j @ j.T, y)
    act = finetune_action(rep, y, lr=rep.step / 2, batch_size=8)
    assert act.constant_mse == pytest.approx(np.var(y))
    assert act.vacuous == (rep.error_bound >= np.var(y))
    assert act.epochs == pytest.approx(act.max_steps / 5)  # 40 rows, batch 8: 5 steps per epoch
    big = finetune_action(rep, y, lr=1.0 / rep.lambda_1)
    assert "would diverge" in big.note


def test_cli_prints_the_action(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    j, y = _problem()
    save_file({"K": torch.tensor(j @ j.T), "labels": torch.tensor(y)}, str(tmp_path / "k.safetensors"))
    code, out, err = run_cli(["stop", str(tmp_path / "k.safetensors"), "--batch-size", "8", "--out",
                              str(tmp_path / "stop")], capsys)
    assert code == 0, err
    assert "action         ntkft finetune --optimizer gd --lr " in out and "--batch-size 8" in out
    assert "constant pred." in out
    code, out, err = run_cli(["stop", str(tmp_path / "k.safetensors"), "--lr", "-1", "--out", str(tmp_path / "s2")], capsys)
    assert code == 2 and "--lr" in err
