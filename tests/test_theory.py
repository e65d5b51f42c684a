"""Theory lab: the reference transformer, its closed-form Jacobians and eNTK, the linearised GD, fits and sweeps."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import killed_on_call
from ntkft.config import make
from ntkft.errors import ConfigError
from ntkft.kernel import kernel_matrix
from ntkft.stopping import KernelGD
from ntkft.theory import ArithmeticConfig, ReferenceTransformer, RefSpec, WidthSweepConfig, entk, kernel_scale, naive_entk
from ntkft.theory.arithmetic import arithmetic_tasks, cross_kernel_ratio
from ntkft.theory.fits import loglog_slope
from ntkft.theory.jacobians import input_jacobian, weight_jacobians
from ntkft.theory.lab import LinearisedGD, build_data, drift_times, holdout_time, student
from ntkft.theory.model import Attention
from ntkft.theory.sweeps import spread

TINY = dict(pretrain_steps=3, finetune_steps=6, n_source=12, n_target=8, n_val=4, n_test=6, drift_points=2)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: a second intra-op thread only adds synchronisation (7x slower on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _inputs(b=5, t=6, vocab=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, t), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    return ids, mask


@pytest.mark.parametrize("par", ["standard", "ntk"])
def test_shapes_and_parameter_count(par):
    spec = RefSpec(width=12, heads=3, blocks=2, parameterisation=par)
    m = ReferenceTransformer(spec, seed=0)
    ids, mask = _inputs()
    assert m(ids, mask).shape == (5, 1) and m.features(ids, mask).shape == (5, 12) and m.out_dim == 1
    n, h, d0 = 12, 3, 16
    per_block = 4 * h * n * n + n * n + n + 4 * n  # Q, K, V, O; MLP weight + bias; two LayerNorms
    assert sum(p.numel() for p in m.parameters()) == d0 * n + n + 2 * per_block + 2 * n + n + 1
    assert not any("embedding" in name for name, _ in m.named_parameters())  # the embedding table is fixed


def test_parameterisations_agree_up_to_the_stated_rescaling():
    """Same seed: same function; d f / d w = (sigma / sqrt(fan_in)) d f / d W tensor by tensor; hence the NTK-param
    kernel is the sum of per-tensor standard kernels times scale^2."""
    ids, mask = _inputs()
    std = ReferenceTransformer(RefSpec(width=10, parameterisation="standard"), seed=3).double()
    ntk = ReferenceTransformer(RefSpec(width=10, parameterisation="ntk"), seed=3).double()
    torch.testing.assert_close(std(ids, mask), ntk(ids, mask), rtol=1e-6, atol=1e-6)  # float32 init
    gs = torch.autograd.grad(std(ids, mask).sum(), list(std.parameters()))
    gn = torch.autograd.grad(ntk(ids, mask).sum(), list(ntk.parameters()))
    scales = []
    for (name, _), a, b in zip(ntk.named_parameters(), gs, gn):
        mod = ntk.get_submodule(name.rsplit(".", 1)[0])
        s = getattr(mod, "scale" if name.endswith("weight") else "scale_b", 1.0) if hasattr(mod, "scale") else 1.0
        scales.append(s)
        torch.testing.assert_close(b, s * a, rtol=1e-5, atol=1e-7)
    assert min(scales) < 0.5  # the rescaling is not trivial
    # NTK-param eNTK = sum over tensors of scale^2 * (standard per-tensor kernel)
    rows_s = torch.stack([torch.cat([s * g.reshape(-1) for s, g in zip(scales, torch.autograd.grad(
        std(ids[i:i + 1], mask[i:i + 1]).sum(), list(std.parameters())))]) for i in range(len(ids))])
    torch.testing.assert_close(entk(ntk, ids, mask), rows_s @ rows_s.T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_closed_form_attention_jacobians_equal_autograd(causal):
    for par in ("standard", "ntk"):
        spec = RefSpec(width=5, heads=2, sigma_q=2.0, sigma_k=2.0, parameterisation=par, causal=causal)
        attn = Attention(spec, torch.Generator().manual_seed(1)).double()
        g, delta = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
        mask = torch.tensor([1, 1, 1, 0])
        out = (attn(g[None], mask[None])[0] * delta).sum()
        gq, gk, gv, go = torch.autograd.grad(out, [attn.q.weight, attn.k.weight, attn.v.weight, attn.o.weight])
        j = weight_jacobians(attn, g, delta, mask)
        torch.testing.assert_close(go, attn.o.scale * j["O"].T)
        for h in range(2):
            rows = slice(5 * h, 5 * h + 5)
            torch.testing.assert_close(gq[rows], attn.q.scale * j[f"Q{h}"].T)
            torch.testing.assert_close(gk[rows], attn.k.scale * j[f"K{h}"].T)
            torch.testing.assert_close(gv[rows], attn.v.scale * j[f"V{h}"].T)
        auto = torch.autograd.functional.jacobian(lambda x, a=attn, mk=mask: a(x[None], mk[None])[0], g).reshape(20, 20)
        torch.testing.assert_close(input_jacobian(attn, g, mask), auto)


def test_closed_form_jacobians_inside_the_model():
    """g^{l-1} and delta^l captured from a full model's forward/backward reproduce its attention weight gradients."""
    m = ReferenceTransformer(RefSpec(width=6, heads=2, sigma_q=2.0, sigma_k=2.0), seed=2).double()
    ids, mask = _inputs(b=2)  # sample 1 has padding
    attn = m.blocks[0].attn
    attn.o.record = True
    seen = {}
    h = attn.register_forward_pre_hook(lambda mod, args: seen.update(g=args[0].detach()))
    out = m(ids, mask).sum()
    grads = torch.autograd.grad(out, [attn.q.weight, attn.o.weight, attn.o.saved[1]])
    h.remove()
    js = [weight_jacobians(attn, seen["g"][i], grads[2][i], mask[i]) for i in range(2)]  # summed over the batch
    torch.testing.assert_close(grads[1], attn.o.scale * (js[0]["O"] + js[1]["O"]).T)
    torch.testing.assert_close(grads[0][6:12], attn.q.scale * (js[0]["Q1"] + js[1]["Q1"]).T)


@pytest.mark.parametrize("par", ["standard", "ntk"])
def test_entk_equals_naive_and_the_engine(par):
    m = ReferenceTransformer(RefSpec(width=12, parameterisation=par), seed=1)
    ids, mask = _inputs(b=6)
    fast = entk(m.double(), ids, mask)
    torch.testing.assert_close(fast, naive_entk(m, ids, mask), rtol=1e-9, atol=1e-9)
    eng = kernel_matrix(m.float(), {"input_ids": ids, "attention_mask": mask}, method="jacobian", progress=False)
    torch.testing.assert_close(eng, fast, rtol=1e-4, atol=1e-4)
    assert kernel_scale(m) == (1 / 12 if par == "standard" else 1.0)


def test_linearised_gd_equals_parameter_gd_on_the_linear_model_and_kernel_gd():
    """f_lin,t from the closed form == GD with lr eta0/n on f_PT + J (theta - theta_PT) == KernelGD on training points."""
    cfg = make(WidthSweepConfig, eta0=0.3, **TINY)
    m = student(cfg, 8, 0, torch.randn(cfg.vocab, cfg.embed_dim)).double()
    ids, _ = _inputs(b=10, seed=4)
    y = torch.randn(6, dtype=torch.float64)
    params = list(m.parameters())
    jac = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(m(ids[i:i + 1]).sum(), params)])
                       for i in range(10)])
    f0 = m(ids).squeeze(-1).detach()
    k = entk(m, ids) * kernel_scale(m)
    lin = LinearisedGD(k[:6, :6], y, f0[:6], cfg.eta0)
    delta, lr = torch.zeros(jac.shape[1], dtype=torch.float64), cfg.lr(8)
    for _ in range(25):
        resid = f0[:6] + jac[:6] @ delta - y
        delta -= lr * jac[:6].T @ resid / 6
    torch.testing.assert_close(lin.predict(k[6:, :6], f0[6:], 25), f0[6:] + jac[6:] @ delta)
    ref = KernelGD(step=cfg.eta0).fit(k[:6, :6].numpy(), y.numpy(), f0[:6].numpy())
    np.testing.assert_allclose(lin.predict(k[:6, :6], f0[:6], 25).numpy(), ref.fitted(25), rtol=1e-8)


def test_infinite_width_limit_spread_shrinks():
    ids, _ = _inputs(b=6, seed=5)
    emb = torch.randn(32, 16)  # the input representation is fixed; only the init varies over seeds
    spreads = []
    for n in (16, 256):
        ks = [entk(ReferenceTransformer(RefSpec(width=n), seed=s, embedding=emb), ids) / n for s in range(4)]
        spreads.append(spread(ks))
    assert spreads[1] < 0.6 * spreads[0], spreads  # ~ n^{-1/2}: a factor 4 expected


def test_orthogonal_tasks_have_a_small_cross_kernel():
    cfg = make(ArithmeticConfig, **TINY)
    data = build_data(cfg)
    tasks = arithmetic_tasks(cfg, data)
    m = student(cfg, 128, 0, data.embedding)
    orth = cross_kernel_ratio(m, tasks["task1"].train, tasks["task2_orthogonal"].train)
    over = cross_kernel_ratio(m, tasks["task1"].train, tasks["task2_overlapping"].train)
    assert orth < 0.3 * over, (orth, over)


def test_fits_and_small_helpers():
    rng = np.random.default_rng(0)
    x = np.repeat([16, 32, 64, 128, 256], 4)
    y = 3.0 * x ** -0.5 * np.exp(0.05 * rng.standard_normal(len(x)))
    f = loglog_slope(x, y, predicted=-0.5)
    assert f.low < -0.5 < f.high and abs(f.slope + 0.5) < 0.05 and f.verdict == "matches"
    assert loglog_slope(x, x ** -1.0, predicted=-0.5).verdict == "faster than predicted"
    assert loglog_slope([1, 2], [1, 2]) is None
    assert drift_times(300, 3) == [75, 150, 300]
    assert holdout_time([3, 2, 1, 2, 2, 0.5], patience=2) == 2


def test_bad_model_and_config_inputs():
    with pytest.raises(ConfigError):
        ReferenceTransformer(RefSpec(width=0))
    with pytest.raises(ConfigError, match="embedding"):
        ReferenceTransformer(RefSpec(width=4), embedding=torch.zeros(3, 3))
    with pytest.raises(ConfigError, match="eta0"):
        make(WidthSweepConfig, eta0=float("nan"))
    with pytest.raises(ConfigError, match="embed_dim"):
        make(WidthSweepConfig, embed_dim=15)
    with pytest.raises(ConfigError, match="at least two widths"):
        make(WidthSweepConfig, widths=16)
    with pytest.raises(ConfigError, match="parameterisation"):
        make(WidthSweepConfig, parameterisation="mup")


def test_width_sweep_resumes_after_a_kill(tmp_path, monkeypatch):
    from ntkft.theory import sweeps

    cfg = make(WidthSweepConfig, widths=[4, 8], seeds=2, fit_min_width=4, **TINY)
    calls = []
    real = sweeps.width_unit

    def counted(*a, **k):
        calls.append(a[2:])
        return real(*a, **k)

    monkeypatch.setattr(sweeps, "width_unit", killed_on_call(counted, 3))
    with pytest.raises(KeyboardInterrupt):
        sweeps.width_sweep(cfg, tmp_path / "run", progress=False, figures=False)
    assert len(list((tmp_path / "run" / "units").glob("*.json"))) == 2
    calls.clear()
    monkeypatch.setattr(sweeps, "width_unit", counted)
    s = sweeps.width_sweep(cfg, tmp_path / "run", progress=False, figures=False)
    assert calls == [(8, 0), (8, 1)]  # only the two unfinished units ran
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["status"] == "complete"
    assert s.per_width["8"].seeds == 2 and s.fits["theta_dist"].all.points == 4
    calls.clear()
    sweeps.width_sweep(cfg.model_copy(update={"seeds": 3}), tmp_path / "run", progress=False, figures=False)
    assert calls == [(4, 2), (8, 2)]  # more seeds extend the sweep; finished units are reused


def _cli(*args):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "ntkft.cli", "theory", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_sweeps_end_to_end_and_bad_input(tmp_path):
    tiny = ["--pretrain-steps", "3", "--finetune-steps", "6", "--n-source", "12", "--n-target", "8", "--n-val", "4",
            "--n-test", "6", "--drift-points", "2"]
    out = tmp_path / "w"
    p = _cli("width-sweep", "--widths", "4,8", "--seeds", "2", "--fit-min-width", "4", "--out", str(out), *tiny)
    assert p.returncode == 0, p.stderr
    assert "sup_t ||K_PT - K_t||_F" in p.stdout and "slope" in p.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["widths"] == [4, 8] and set(s["fits"]) >= {"theta_dist", "drift_sup_rel", "lin_sup", "k0_spread"}
    assert (out / "scaling.png").stat().st_size > 10_000 and (out / "errors.png").is_file()
    assert json.loads((out / "meta.json").read_text())["status"] == "complete"
    p = _cli("width-sweep", "--widths", "4,8", "--seeds", "2", "--out", str(out), "--noise", "0.3", *tiny)
    assert p.returncode == 2 and "different" in p.stderr and "--overwrite" in p.stderr and "Traceback" not in p.stderr
    p = _cli("width-sweep", "--out", str(tmp_path / "bad"), "--eta0", "-1")
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("ntkft: error")]
    assert p.returncode == 2 and len(lines) == 1 and "--eta0" in lines[0] and "Traceback" not in p.stderr, p.stderr


def test_arithmetic_tiny(tmp_path):
    from ntkft.theory import arithmetic_sweep

    cfg = make(ArithmeticConfig, widths=[4, 8, 16], seeds=1, **TINY)
    a = arithmetic_sweep(cfg, tmp_path / "a", progress=False, figures=False)
    assert set(a.per_width["8"]) == {"orthogonal", "overlapping"}
    assert math.isfinite(a.per_width["8"]["orthogonal"].q("cross_kernel_ratio").mean)
    assert a.fits["orthogonal.cross_kernel_ratio"].fit.points == 3


def test_sample_sweep_tiny(tmp_path):
    from ntkft.theory import SampleSweepConfig, sample_sweep

    cfg = make(SampleSweepConfig, width=8, sizes=[6, 10, 14], seeds=1, **{k: v for k, v in TINY.items() if k != "n_target"})
    s = sample_sweep(cfg, tmp_path / "s", progress=False)
    assert s.sizes == [6, 10, 14] and s.beta.window_mean > 0
    assert s.fits["oracle.net"].points == 3
    assert (tmp_path / "s" / "learning_curves.png").is_file() and (tmp_path / "s" / "spectrum.png").is_file()


def test_unit_records_written_read_back_and_a_renamed_field_fails_in_one_line(tmp_path):
    """Through run_units (the resume path): a unit written is read back equal; a renamed field is one DataError line
    naming the file and the field."""
    from ntkft._runs import RunFolder
    from ntkft.errors import DataError
    from ntkft.theory.arithmetic import arithmetic_unit
    from ntkft.theory.lab import width_unit
    from ntkft.theory.sweeps import run_units
    from ntkft.theory.units import ArithmeticUnit, WidthUnit

    wcfg, acfg = make(WidthSweepConfig, widths=[4, 8], seeds=1, **TINY), make(ArithmeticConfig, widths=[4, 8], **TINY)
    adata = build_data(acfg)
    made = {"w": (WidthUnit, width_unit(wcfg, build_data(wcfg), 4, 0)),
            "a": (ArithmeticUnit, arithmetic_unit(acfg, adata, arithmetic_tasks(acfg, adata), 4, 0))}
    rf = RunFolder(tmp_path / "run", "test", {})
    rf.open()

    def never():
        raise AssertionError("a finished unit ran again")

    for name, (record, (unit, tensors)) in made.items():
        run_units(rf, record, [(name, lambda u=unit, t=tensors: (u, t))], progress=False)  # written
        back = run_units(rf, record, [(name, never)], progress=False)[name][0]  # read back, validated
        assert type(back) is record and json.dumps(back.to_dict()) == json.dumps(unit.to_dict())  # NaN-safe
    for name, old, new in (("w", "diff_rms", "diff_rmse"), ("a", "leakage_dir8", "leak_dir8")):
        path = rf.root / "units" / f"{name}.json"
        assert f'"{old}"' in path.read_text()
        path.write_text(path.read_text().replace(f'"{old}"', f'"{new}"', 1))
        with pytest.raises(DataError) as e:
            run_units(rf, made[name][0], [(name, never)], progress=False)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and (old in msg or new in msg), msg
    rf.release()
