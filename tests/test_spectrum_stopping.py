"""Spectrum and early stopping on closed-form kernels, a RWY-style simulation, and naive references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ntkft.errors import ConfigError, KernelError
from ntkft.spectrum import (
    compare_models,
    effective_dimension,
    eigenvalues,
    equivalent_n,
    fit_beta,
    over_draws,
    paper_beta,
    rate_exponent,
    sensitivity,
    subsample_ci,
)
from ntkft.stopping import (
    KernelGD,
    KernelRidge,
    cv_ridge,
    estimate_sigma,
    eta_star,
    first_firing,
    holdout_stop,
    iterate_gd,
    rademacher,
    stop_report,
    stopping_time,
    t_op,
)


def sobolev(x, z=None):
    z = x if z is None else z
    return np.minimum(x[:, None], z[None, :])


def rbf(x, z=None, ell=0.2):
    z = x if z is None else z
    return np.exp(-((x[:, None] - z[None, :]) ** 2) / (2 * ell ** 2))


@pytest.fixture(scope="module")
def xs():
    return np.sort(np.random.default_rng(0).uniform(0, 1, 400))


def test_sobolev_beta_recovered(xs):
    # min(x, x') on U[0,1]: mu_k = 1 / ((k - 1/2)^2 pi^2), so 2 beta = 2
    lams = eigenvalues(sobolev(xs))
    assert fit_beta(lams).beta == pytest.approx(1.0, abs=0.08)
    paper = paper_beta(lams).beta  # through the origin over all k: biased by the finite-N tail
    assert paper == pytest.approx(1.0, abs=0.25) and abs(fit_beta(lams).beta - 1) < abs(paper - 1)
    k = np.arange(1, 11)
    assert lams[:10] == pytest.approx(1 / ((k - 0.5) ** 2 * math.pi ** 2), rel=0.1)
    assert compare_models(lams, 5, 100).better == "power"
    ci = subsample_ci(sobolev(xs[::3]), draws=60, level=0.9)  # N = 134
    assert ci.low <= ci.beta <= ci.high and ci.high - ci.low < 0.3 and abs(ci.beta - 1.05) < 0.1
    assert all(abs(row.beta - 1.0) < 0.25 for row in sensitivity(lams) if row.k_min >= 2)


def test_rbf_prefers_exponential(xs):
    assert compare_models(eigenvalues(rbf(xs)), 1, 15).better == "exponential"


def test_rates_and_effective_dimension():
    assert rate_exponent(1.0) == pytest.approx(2 / 3)
    assert equivalent_n(100, 1.0, 1.0) == pytest.approx(100)
    assert equivalent_n(100, 1.0, 0.5) > 100  # slower decay needs more samples
    lams = 1.0 / np.arange(1, 101) ** 2
    d = effective_dimension(lams, [1e-4, 1e-2])
    assert d[0] > d[1] and d[1] == pytest.approx(np.sum(lams / (lams + 1e-2)))


def test_over_draws(xs):
    rng = np.random.default_rng(1)
    ks = [sobolev(np.sort(rng.uniform(0, 1, 100))) for _ in range(3)]
    od = over_draws(ks, "window")
    assert len(od.betas) == 3 and od.std < 0.2 and abs(od.mean - 1) < 0.2 and od["mean"] == od.mean


@pytest.mark.parametrize("bad,match", [
    (np.ones((3, 4)), "square"), (np.array([[1.0, 2.0], [0.0, 1.0]]), "not symmetric"),
    (np.array([[np.nan, 0], [0, 1.0]]), "NaN"), (np.diag([1.0, -0.5]), "not positive semi-definite"),
])
def test_bad_kernels(bad, match):
    with pytest.raises(KernelError, match=match):
        eigenvalues(bad)


def test_too_few_eigenvalues_for_window():
    with pytest.raises(KernelError, match="fewer than 3"):
        fit_beta(np.array([1.0, 0.5, 0.0, 0.0]))


# ------------------------------------------------------------------ kernel gradient descent


def test_closed_form_gd_equals_iteration(xs):
    k = sobolev(xs[:80])
    y = np.sin(6 * xs[:80])
    f0 = 0.1 * np.cos(xs[:80])
    gd = KernelGD(step=0.5).fit(k, y, f0)
    assert gd.fitted(37) == pytest.approx(iterate_gd(k, y, 0.5, 37, f0), abs=1e-10)
    steps = 0.5 / np.sqrt(np.arange(1, 38))
    assert gd.fitted(37, steps) == pytest.approx(iterate_gd(k, y, steps, 37, f0), abs=1e-10)
    # in-sample prediction through the cross kernel equals the fitted values
    assert gd.predict(k, f0, t=37) == pytest.approx(gd.fitted(37), abs=1e-8)
    with pytest.raises(ConfigError, match="non-increasing"):
        gd.fitted(3, [0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="exceeds"):
        KernelGD(step=10.0).fit(k, y)


def test_krr_and_gd_filters_sandwich(xs):
    k = sobolev(xs[:100])
    gd = KernelGD(step=0.9).fit(k, np.ones(100))
    for t in (1, 10, 100, 1000):
        eta = 0.9 * t
        q_gd = gd.filters(t)
        q_krr = KernelRidge(1.0 / eta).fit(k, np.ones(100)).filters()
        pos = gd.lams_ > 0
        ratio = q_gd[pos] / q_krr[pos]
        assert ratio.min() >= 0.5 - 1e-12 and ratio.max() <= 2 + 1e-12


def test_rwy_rule_eta_star_matches_direct_iteration(xs):
    lams = eigenvalues(sobolev(xs[:200]))
    for radius, sigma, step in [(1.0, 0.3, 0.5), (2.0, 0.1, 1.0), (0.5, 1.0, 0.2)]:
        assert stopping_time(lams, step, radius, sigma) == first_firing(lams, step, radius, sigma)
        es = eta_star(lams, radius, sigma)
        # at eta*, R_K(1/sqrt(eta)) = R / (2 e sigma eta): the critical equation holds
        assert rademacher(lams, 1 / math.sqrt(es))[0] == pytest.approx(radius / (2 * math.e * sigma * es), rel=1e-6)
    sched = 0.5 / np.sqrt(np.arange(1, 5000))
    assert stopping_time(lams, sched, 1.0, 0.3) == first_firing(lams, sched, 1.0, 0.3)


def test_rwy_simulation_rate_and_oracle():
    """As RWY: f* in the RKHS of min(x, x') (coefficients k^-1.6 on the kernel's eigenfunctions, so the
    bias is of the worst-case order), Gaussian noise, n in {100, 200, 400, 800}: the error of f^{T_hat}
    stays within a constant factor of the oracle and falls like n^(-2/3)."""
    ks = np.arange(1, 401)
    coef = ks ** -1.6
    fstar = lambda x: (np.sqrt(2) * np.sin(np.outer(x, (ks - 0.5) * math.pi))) @ coef  # noqa: E731
    radius = math.sqrt(np.sum(coef ** 2 * ((ks - 0.5) * math.pi) ** 2))  # ||f*||_H
    rng = np.random.default_rng(0)
    sigma, step = 0.5, 1.0
    ns, errs, oracles = [100, 200, 400, 800], [], []
    for n in ns:
        e_rule, e_or = [], []
        for _ in range(5):
            x = np.sort(rng.uniform(0, 1, n))
            f = fstar(x)
            y = f + sigma * rng.standard_normal(n)
            k = sobolev(x)
            t_hat = stopping_time(eigenvalues(k), step, radius=radius, sigma=sigma)
            gd = KernelGD(step=step).fit(k, y)
            e_rule.append(np.mean((gd.fitted(t_hat) - f) ** 2))
            e_or.append(gd.path_mse(4 * max(t_hat, 50), target=f).min())
        errs.append(np.mean(e_rule))
        oracles.append(np.mean(e_or))
    ratios = np.array(errs) / np.array(oracles)
    assert ratios.max() < 3
    slope = np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert -0.8 < slope < -0.5  # theory: -2 beta / (2 beta + 1) = -2/3 (measured: -0.63)


def test_stop_report_estimates_and_epochs(xs):
    n = 150
    x = xs[::2][:n]
    rng = np.random.default_rng(3)
    y = np.sin(4 * x) + 0.3 * rng.standard_normal(n)
    k = sobolev(x)
    rep = stop_report(k, y, batch_size=16)
    assert "estimated" in rep.radius_source and "estimated" in rep.sigma_source
    assert 0.15 < rep.sigma < 0.5
    assert rep.epochs == pytest.approx(rep.t_hat / math.ceil(n / 16))
    given = stop_report(k, y, sigma=0.3, radius=1.0)
    assert given.sigma_source == "given" and given.t_hat == stopping_time(eigenvalues(k), given.step, 1.0, 0.3)
    s, _ = estimate_sigma(k, y)
    assert s == pytest.approx(rep.sigma)


def test_t_op_with_drift():
    etas = np.arange(0, 101, dtype=float)
    assert t_op(etas, lambda t: 0.0, c=1.0) == 100
    assert t_op(etas, lambda t: 0.01 * t, c=1.0) == 10  # argmin of 1/t + t/100
    with pytest.raises(ConfigError, match="non-decreasing"):
        t_op(etas, lambda t: -t, c=1.0)


def test_cv_ridge_and_holdout_stop(xs):
    rng = np.random.default_rng(4)
    x = xs[:200]
    y = np.sin(5 * x) + 0.3 * rng.standard_normal(200)
    k = sobolev(x)
    cv = cv_ridge(k, y, folds=5)
    assert cv.cv_mse[int(np.argmin(cv.cv_mse))] < min(cv.cv_mse[0], cv.cv_mse[-1]) and cv.eta == 1 / cv.ridge
    assert cv.to_dict()["folds"] == 5
    tr, va = np.arange(0, 200, 2), np.arange(1, 200, 2)
    ktr = sobolev(x[tr])
    kva = sobolev(x[va], x[tr])
    res = holdout_stop(ktr, y[tr], kva, y[va], step=1.0, t_max=5000, patience=20, eval_every=5)
    assert 0 < res.best_t < res.stopped_at and res.best_val_mse < res.val_curve[0]


@pytest.mark.parametrize("kw,param", [
    ({"sigma": float("nan")}, "sigma"), ({"sigma": 0.0}, "sigma"), ({"sigma": -1.0}, "sigma"),
    ({"sigma": float("inf")}, "sigma"), ({"radius": 0.0}, "radius"), ({"radius": float("nan")}, "radius"),
    ({"step": float("inf")}, "step"), ({"step": 0.0}, "step"), ({"batch_size": 0}, "batch_size"),
])
def test_stop_report_refuses_impossible_numbers(kw, param, xs):
    """Today's bug: NaN sigma gave eps_hat 1.27e+30 and T_hat 0 without a word."""
    x = xs[:40]
    with pytest.raises(ConfigError) as e:
        stop_report(sobolev(x), np.sin(4 * x), **kw)
    assert e.value.param == param and str(e.value).startswith(f"{param}: ")


def test_stop_report_eigendecomposes_once(monkeypatch, xs):
    import ntkft.stopping.rwy as rwy

    calls = {"n": 0}
    real = rwy.eigh_desc

    def counting(*a, **kw):
        calls["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(rwy, "eigh_desc", counting)
    monkeypatch.setattr(np.linalg, "eigh", lambda *a, **kw: pytest.fail("a second decomposition"))
    x = xs[:80]
    y = np.sin(4 * x) + 0.1 * np.random.default_rng(0).standard_normal(80)
    rep = stop_report(sobolev(x), y)
    assert calls["n"] == 1 and rep.t_hat >= 0 and rep.pilot_ridge is not None and rep.to_dict()["num_zero"] == 0
    # the single decomposition gives what the separate estimators give
    assert rep.radius == pytest.approx(
        math.sqrt(y @ np.linalg.pinv(sobolev(x), rcond=1e-10, hermitian=True) @ y), rel=1e-6)


@pytest.mark.parametrize("make", [
    lambda: KernelGD(step=float("nan")), lambda: KernelGD(t=-1), lambda: KernelRidge(ridge=0.0),
    lambda: KernelRidge(ridge=float("inf")),
])
def test_estimators_validate_arguments(make):
    with pytest.raises(ConfigError):
        make()
