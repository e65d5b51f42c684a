"""Shared predictors (select/predictors.py) and statistics (select/stats.py) against hand values, their
definitions written out naively, closed forms, and the peer implementation (transformer-ranker)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import optimize, stats

from ntkft.errors import NtkftError
from ntkft.select.predictors import hscore, kta, logme, predicted_curve
from ntkft.select.stats import (
    fit_rate,
    kendall_perm,
    n_half,
    spearman_critical,
    spearman_one_sided,
    spearman_power,
    stratified_perm_test,
)

# ---------------------------------------------------------------- KTA


def test_kta_hand_values():
    y = np.array([1.0, 2.0, 4.0, 7.0])
    assert kta(np.outer(y, y), y) == pytest.approx(1.0)  # K = y y^T aligns perfectly after centring
    # K = I: <H, yc yc^T> = ||yc||^2, ||H||_F = sqrt(n - 1), ||yc yc^T||_F = ||yc||^2
    assert kta(np.eye(4), y) == pytest.approx(1 / math.sqrt(3))


def test_kta_matches_naive_centring_and_one_hot():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 3))
    k = x @ x.T + 0.5
    lab = rng.integers(0, 3, 12)
    h = np.eye(12) - 1 / 12
    yy = np.eye(3)[lab]
    a, b = h @ k @ h, h @ yy @ yy.T @ h
    naive = np.sum(a * b) / np.linalg.norm(a) / np.linalg.norm(b)
    assert kta(k, lab, classification=True) == pytest.approx(naive, rel=1e-10)
    assert kta(k, yy) == pytest.approx(naive, rel=1e-10)


# ---------------------------------------------------------------- LogME


def _evidence(f, y, alpha, beta):
    """log N(y; 0, F F^T / alpha + I / beta) / n: the marginal likelihood LogME maximises, written out densely."""
    n = len(y)
    cov = f @ f.T / alpha + np.eye(n) / beta
    return stats.multivariate_normal(np.zeros(n), cov).logpdf(y) / n


def _logme_by_definition(f, y):
    best = optimize.minimize(lambda p: -_evidence(f, y, math.exp(p[0]), math.exp(p[1])), x0=[0.0, 0.0],
                             method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 4000})
    return -best.fun


@pytest.mark.parametrize("n,d,tol", [(20, 4, 1e-6), (8, 15, 1e-3)])
def test_logme_is_the_maximised_evidence(n, d, tol):
    # d > n: F F^T is invertible and the evidence rises towards noise precision beta -> inf; the published
    # fixed point stops near that edge (its 1e-5 guard), within 1e-3 of the supremum
    rng = np.random.default_rng(n)
    f = rng.standard_normal((n, d))
    y = f @ rng.standard_normal(d) * 0.5 + 0.3 * rng.standard_normal(n)
    assert logme(f, y, classification=False) == pytest.approx(_logme_by_definition(f, y), abs=tol)


def test_logme_classification_averages_one_hot_columns():
    rng = np.random.default_rng(1)
    lab = rng.integers(0, 3, 15)
    # features that carry the labels: an interior maximum (on pure noise alpha -> inf, where the 1e-5 guard bites)
    f = np.eye(3)[lab] @ rng.standard_normal((3, 3)) + 0.5 * rng.standard_normal((15, 3))
    cols = [_logme_by_definition(f, (lab == c).astype(float)) for c in range(3)]
    assert logme(f, lab, classification=True) == pytest.approx(np.mean(cols), abs=1e-6)


# ---------------------------------------------------------------- H-score


def test_hscore_hand_value():
    # centred features, covariance diag(4, 1), class means (+-2, 0). By hand: beta = (25 - 17) / 8 = 1,
    # delta = (17 - 25 + 12.5) / 2 = 2.25, shrinkage 4/9, shrunk covariance diag(10/3, 5/3), class-mean
    # covariance (2 * 8 / 3) e1 e1^T, H = (5/9) (16/3) / (10/3) = 8/9
    f = np.array([[2.0, 1.0], [2.0, -1.0], [-2.0, 1.0], [-2.0, -1.0]])
    assert hscore(f, [0, 0, 1, 1]) == pytest.approx(8 / 9)


def test_errors_are_one_line():
    with pytest.raises(NtkftError, match="2 classes"):
        hscore(np.ones((4, 2)), [1, 1, 1, 1])
    with pytest.raises(NtkftError, match="NaN"):
        logme(np.array([[1.0, np.nan], [0.0, 1.0]]), [1.0, 2.0], classification=False)
    with pytest.raises(NtkftError, match="sizes"):
        predicted_curve(np.eye(10), np.arange(10.0), [10])


# ---------------------------------------------------------------- transformer-ranker (the peer)


def test_against_transformer_ranker():
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformer_ranker.estimators")
    rng = np.random.default_rng(3)
    f = rng.standard_normal((60, 8))
    lab = (f[:, 0] + 0.5 * rng.standard_normal(60) > 0).astype(int) + (f[:, 1] > 1)
    ft, lt = torch.tensor(f), torch.tensor(lab)
    peer_h = tr.HScore().fit(ft, lt)
    assert hscore(f, lab) == pytest.approx(peer_h, rel=1e-9)
    # the peer adds 1e-5 to the fixed point's denominators and warm-starts each class: equal at convergence (d < n)
    peer_l = tr.LogME().fit(ft, lt, max_iter=10000, tol=1e-12)
    assert logme(f, lab, classification=True) == pytest.approx(peer_l, abs=1e-4)
    y = f @ rng.standard_normal(8) + rng.standard_normal(60)
    peer_r = tr.LogME(regression=True).fit(ft, torch.tensor(y), max_iter=10000, tol=1e-12)
    assert logme(f, y, classification=False) == pytest.approx(peer_r, abs=1e-4)


# ---------------------------------------------------------------- the predicted curve


def _naive_curve_point(k, y, perm, n, nv, times, classification):
    """Explicit kernel GD in coefficient form: c <- c + (step / n_tr) (y_tr - f_tr), f = f0 + K c; hold-out rule
    over `times`; test metric and the constant predictor's, written without the eigenbasis."""
    va, tr, te = perm[:nv], perm[nv:n], perm[n:]
    yy = np.eye(int(y.max()) + 1)[y] if classification else y[:, None]
    f0 = yy[tr].mean(0)
    ktr = k[np.ix_(tr, tr)]
    top = np.linalg.eigvalsh(ktr / len(tr)).max()
    step = 1 / top if top > 1 else 1.0
    c = np.zeros((len(tr), yy.shape[1]))

    def score(pred, tgt):
        return np.mean(pred.argmax(1) != tgt.argmax(1)) if classification else np.mean((pred - tgt) ** 2)

    best, best_test = None, None
    for t in range(max(times) + 1):
        if t in times:
            pv = f0 + k[np.ix_(va, tr)] @ c
            key = (score(pv, yy[va]), np.mean((pv - yy[va]) ** 2))
            if best is None or key < best:
                best, best_test = key, score(f0 + k[np.ix_(te, tr)] @ c, yy[te])
        c = c + step / len(tr) * (yy[tr] - (f0 + ktr @ c))
    if classification:
        const = np.eye(yy.shape[1])[np.argmax(f0)]
        base = score(np.broadcast_to(const, yy[te].shape), yy[te])
    else:
        base = score(np.broadcast_to(f0, yy[te].shape), yy[te])
    return best_test, base


@pytest.mark.parametrize("classification", [False, True])
def test_predicted_curve_equals_kernel_gd(classification):
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, 70)
    k = np.exp(-np.subtract.outer(x, x) ** 2 / 0.1)  # Gaussian kernel: closed form
    y = (np.sin(3 * x) + 0.3 * rng.standard_normal(70))
    if classification:
        y = (y > 0).astype(int) + (y > 0.8)
    times = list(range(0, 400, 7))
    sizes = [20, 40]
    cur = predicted_curve(k, y, sizes, n_subsets=2, classification=classification, seed=9, min_val=8, times=times)
    gen = np.random.default_rng(9)
    for i, n in enumerate(sizes):
        nv = min(max(8, math.ceil(0.25 * n)), n // 2)
        pts = [_naive_curve_point(k, y, gen.permutation(70), n, nv, set(times), classification) for _ in range(2)]
        assert cur.n_val[i] == nv
        assert cur.mean[i] == pytest.approx(np.mean([p[0] for p in pts]), rel=1e-9, abs=1e-12)
        assert cur.baseline[i] == pytest.approx(np.mean([p[1] for p in pts]), rel=1e-9)
    assert cur.metric == ("error" if classification else "mse")


def test_predicted_curve_learns_and_beats_the_constant():
    rng = np.random.default_rng(6)
    x = rng.uniform(-1, 1, 300)
    k = np.exp(-np.subtract.outer(x, x) ** 2 / 0.1)
    y = np.sin(3 * x) + 0.2 * rng.standard_normal(300)
    cur = predicted_curve(k, y, [16, 64, 200], n_subsets=5, val_outside=True)
    assert cur.n_val == [32, 32, 50]
    assert cur.mean[0] > cur.mean[-1]
    assert all(lo <= m <= hi for lo, m, hi in zip(cur.low, cur.mean, cur.high))
    assert cur.mean[-1] < 0.5 * cur.baseline[-1]


def test_predicted_curve_model_start():
    """`start`: kernel GD from the model's own step-0 function f_0 = mean + sd (g_0 - mean g_0) over each subset's
    training rows. At t = 0 the curve is f_0's test error, written out naively; a zero start is the constant start;
    a start that spreads like the targets costs error at small n; classification refuses it."""
    rng = np.random.default_rng(8)
    x = rng.uniform(-1, 1, 80)
    k = np.exp(-np.subtract.outer(x, x) ** 2 / 0.1)
    y = np.sin(3 * x) + 0.2 * rng.standard_normal(80)
    g0 = rng.standard_normal(80)
    cur = predicted_curve(k, y, [24], n_subsets=3, seed=4, min_val=8, times=[0], start=g0)
    gen = np.random.default_rng(4)
    want = []
    for _ in range(3):
        perm = gen.permutation(80)
        tr, te = perm[8:24], perm[24:]
        f0 = y[tr].mean() + y[tr].std() * (g0 - g0[tr].mean())
        want.append(np.mean((f0[te] - y[te]) ** 2))
    assert cur.mean[0] == pytest.approx(np.mean(want), rel=1e-12)
    plain = predicted_curve(k, y, [16, 40], n_subsets=4, seed=1)
    assert predicted_curve(k, y, [16, 40], n_subsets=4, seed=1, start=np.zeros(80)).mean == pytest.approx(plain.mean)
    noisy = predicted_curve(k, y, [16, 40], n_subsets=4, seed=1, start=3 * g0)
    assert noisy.mean[0] > plain.mean[0] and noisy.baseline == pytest.approx(plain.baseline)
    with pytest.raises(NtkftError, match="start"):
        predicted_curve(k, (y > 0).astype(int), [16], classification=True, start=g0)
    with pytest.raises(NtkftError, match="start"):
        predicted_curve(k, y, [16], start=g0[:10])


# ---------------------------------------------------------------- rate fit, n_half


def test_fit_rate_recovers_r_from_noisy_curves():
    n = np.array([16, 32, 64, 128, 256, 512, 1024.0])
    rng = np.random.default_rng(0)
    for r in (0.3, 0.6, 1.0):
        e = 0.1 + 2.0 * n ** -r + 0.004 * rng.standard_normal((8, len(n)))
        fit = fit_rate(n, e, n_boot=300)
        assert fit.r == pytest.approx(r, abs=0.1)
        # 8 replicates: the percentile bootstrap is narrow (covers 73-83% at 90% in a simulation), so only its shape
        assert fit.ci is not None and fit.ci[0] <= fit.r <= fit.ci[1] and 0 < fit.ci[1] - fit.ci[0] < 0.2
    exact = fit_rate(n, 0.1 + 2.0 * n ** -0.6)
    assert (exact.r, exact.c, exact.a) == pytest.approx((0.6, 0.1, 2.0), rel=1e-5)
    assert fit_rate(n, 0.5 + 0 * n).a == 0.0  # a flat curve has no rate



def test_fit_rate_floor_keeps_c_non_negative():
    """A curve that still accelerates over its sizes (MiniLM SST-2: 0.443, 0.39, 0.23 at n = 64, 128, 256): the free
    fit puts c far below zero with r at its lower bound; the floor (the default) gives c = 0 and r near the log-log
    slope (0.47); on an exact power law with no floor, r itself; where the free c >= 0 the floor changes nothing."""
    sizes = [64, 128, 256]
    e = np.array([0.443, 0.39, 0.23])
    free = fit_rate(sizes, e, n_boot=0, floor=False)
    assert free.c < 0 and free.r < 0.01
    got = fit_rate(sizes, e, n_boot=0)
    slope = -np.polyfit(np.log(sizes), np.log(e), 1)[0]
    assert got.c == 0.0 and got.a > 0 and 0.3 < got.r < 0.6 and abs(got.r - slope) < 0.1
    reps = e + 0.01 * np.random.default_rng(0).standard_normal((6, 3))  # replicates: the bootstrap floors each
    ci = fit_rate(sizes, reps, n_boot=200).ci
    assert ci is not None and 0.3 < ci[0] <= ci[1] < 0.6
    n = np.array([64, 128, 256, 1024.0])
    assert fit_rate(n, 3.0 * n ** -0.5).r == pytest.approx(0.5, abs=0.02)
    above = 0.1 + 2.0 * n ** -0.6
    assert fit_rate(n, above) == fit_rate(n, above, floor=False)

def test_n_half_hand_value():
    # target (1 + 0.2) / 2 = 0.6, between 10 (0.8) and 100 (0.2) one third of the way in log n
    assert n_half([10, 100], [0.8, 0.2], 1.0) == pytest.approx(10 ** (4 / 3))
    assert n_half([10, 100], [0.5, 0.2], 1.0) == pytest.approx(10 ** (0.4 / 0.5))  # from (1, baseline)
    assert math.isnan(n_half([10, 100], [0.8, 1.2], 1.0))


# ---------------------------------------------------------------- Spearman and its power


def test_spearman_exact_p_against_enumeration():
    x = [0.3, 1.2, 0.9, 2.0, 1.7, 0.1, 1.2]
    y = [1.0, 2.0, 2.5, 3.1, 2.0, 0.2, 4.0]  # ties in both
    rho, p = spearman_one_sided(x, y)
    assert rho == pytest.approx(stats.spearmanr(x, y).statistic)
    perms = [stats.spearmanr(x, [y[i] for i in pi]).statistic for pi in itertools.permutations(range(7))]
    assert p == pytest.approx(np.mean(np.array(perms) >= rho - 1e-12))
    # above the enumeration limit: Monte Carlo agrees with scipy's exact distribution (no ties)
    xs = np.arange(11.0)
    ys = np.array([0, 2, 1, 3, 5, 4, 6, 9, 7, 8, 10.0])
    rho, p = spearman_one_sided(xs, ys, n_perm=40000)
    assert p == pytest.approx(stats.spearmanr(xs, ys, alternative="greater").pvalue, abs=0.003)


def test_spearman_power_against_closed_forms():
    # k = 2: rho is +-1, p(+1) = 1/2, so at alpha = 1/2 the power is P(concordant) = 1/2 + arcsin(r)/pi
    for rho in (0.0, 0.5, 0.8):
        r = 2 * math.sin(math.pi * rho / 6)
        assert spearman_power(2, rho, alpha=0.5, n_sim=20000) == pytest.approx(0.5 + math.asin(r) / math.pi, abs=0.012)
    # k = 4 under the null: only the identity ordering has p <= 0.05 (p = 1/24), so the power is the size 1/24
    assert spearman_critical(4, 0.05) == pytest.approx(1.0)
    assert spearman_power(4, 0.0, n_sim=40000) == pytest.approx(1 / 24, abs=0.004)
    assert spearman_power(3, 0.9) == 0.0  # k = 3 cannot reach p <= 0.05 (smallest p 1/6)


# ---------------------------------------------------------------- Kendall and the stratified test


def test_kendall_perm_exact_matches_scipy():
    x = [1, 2, 3, 4, 5, 6]
    y = [2, 1, 3, 4, 6, 5]
    tau, p = kendall_perm(x, y)
    ref = stats.kendalltau(x, y, method="exact")
    assert (tau, p) == pytest.approx((ref.statistic, ref.pvalue))
    tau, p = kendall_perm(np.arange(10), [1, 0, 2, 3, 5, 4, 6, 8, 7, 9], n_perm=20000)
    ref = stats.kendalltau(np.arange(10), [1, 0, 2, 3, 5, 4, 6, 8, 7, 9], method="exact")
    assert p == pytest.approx(ref.pvalue, abs=0.003)


def test_stratified_perm_test():
    x = [1.0, 2, 3, 4, 5]
    one = stratified_perm_test([(x, [2.0, 1, 3, 5, 4])], n_perm=20000)
    assert one[0] == pytest.approx(0.6)
    assert one[1] == pytest.approx(kendall_perm(x, [2.0, 1, 3, 5, 4])[1], abs=0.01)
    perfect = stratified_perm_test([(x, x)] * 3, n_perm=2000, alternative="greater")
    assert perfect == (1.0, pytest.approx(1 / 2001))
    rng = np.random.default_rng(2)
    ps = [stratified_perm_test([(rng.standard_normal(6), rng.standard_normal(6)) for _ in range(4)], stat=s,
                               n_perm=500, seed=i)[1] for i, s in enumerate(["kendall", "spearman", "pearson"] * 4)]
    assert 0.05 < np.mean(ps) < 0.95  # null data: no systematic small p
