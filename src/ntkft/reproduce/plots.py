"""The reproduction's figures (matplotlib, Agg), drawn from the stages' typed results as PNG bytes.

The results are named here by the attributes a figure reads (Protocols), so this module imports no stage."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .paper import label


class SpectrumLike(Protocol):
    """What the spectra figure reads of a `spectra.TaskSpectrum`."""

    task: str
    eigenvalues: list[list[float]]
    beta_paper: list[float]
    beta_paper_mean: float
    beta_ntkft: list[float]
    beta_ntkft_mean: float
    window: tuple[int, int]


class CurveLike(Protocol):
    """What the curves figure reads of a `curves.TaskCurve`."""

    task: str
    sizes: list[int]
    metrics: dict[str, list[float]]
    sd: dict[str, list[float]]
    kgd_sizes: list[int]
    kgd: dict[str, list[float]]


class StopLike(Protocol):
    """What the stopping figure reads of a `stopping.StopRow`."""

    t_hat: int | None
    t_holdout: int
    t_oracle: int


class EfficiencyLike(Protocol):
    """What the rankings figure reads of a `rankings.Efficiency`."""

    task: str
    beta: float
    auc: float


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _grid(n: int, width: float = 3.2, height: float = 2.7) -> tuple[Any, list[Any]]:
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = _plt().subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def spectra_figure(spectra: Sequence[SpectrumLike], title: str) -> bytes:
    """Paper Figures 4-9: log-log eigenvalues of K/N per task (every draw), the paper's fit through lambda_1
    (dashed) and ntkft's scale-matched beta over its window (dotted) of the first draw."""
    fig, axes = _grid(len(spectra))
    for ax, s in zip(axes, spectra, strict=False):
        for d, lams in enumerate(s.eigenvalues):
            lam = np.asarray(lams)
            lam = lam[lam > 0]
            k = np.arange(1, len(lam) + 1)
            ax.loglog(k, lam, "o", ms=2, alpha=0.6, color=f"C{d}", label=f"draw {d}")
        lam = np.asarray(s.eigenvalues[0])
        lam = lam[lam > 0]
        k = np.arange(1, len(lam) + 1)
        ax.loglog(k, lam[0] * k ** (-2 * s.beta_paper[0]), "--", color="k", lw=1,
                  label=f"paper fit, beta={s.beta_paper_mean:.3f}")
        a, b = s.window
        if 1 <= a <= min(b, len(lam)) and np.isfinite(s.beta_ntkft[0]):
            kk = np.arange(a, b + 1)
            # a slope, not a fit line: anchored at lambda_a of the first draw
            ax.loglog(kk, lam[a - 1] * (kk / a) ** (-2 * s.beta_ntkft[0]), ":", color="r", lw=1.2,
                      label=f"ntkft, beta={s.beta_ntkft_mean:.3f}")
        ax.set_title(f"{label(s.task)}", fontsize=9)
        ax.set_xlabel("k", fontsize=8)
        ax.set_ylabel("lambda_k", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
        ax.grid(True, which="both", alpha=0.25)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def _anchor(sizes: Sequence[float], values: Any, exponent: float) -> Any:
    """c n^-exponent with c fitted (least squares in logs) to the measured points."""
    x, y = np.log(np.asarray(sizes, dtype=np.float64)), np.log(np.asarray(values, dtype=np.float64))
    c = np.mean(y + exponent * x)
    return np.exp(c - exponent * x)


def curves_figure(curves: Sequence[CurveLike], betas: dict[str, float], kind: str, title: str) -> bytes:
    """Paper Figure 2 and 10 with the linearised model beside them. kind: 'regression' (raw MSE, then
    MSE/Var(y_test) on log-log axes with kernel GD dashed and the eq-30 rate dotted) or 'classification'
    (accuracy with kernel GD dashed, then F1)."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, c in enumerate(curves):
        col = f"C{i}"
        xs = c.sizes
        name = label(c.task)
        if kind == "regression":
            m, s = np.asarray(c.metrics["mse"]), np.asarray(c.sd["mse"])
            a1.plot(xs, m, "o-", color=col, label=name, ms=3)
            a1.fill_between(xs, m - s, m + s, color=col, alpha=0.15)
            nm = np.asarray(c.metrics["nmse"])
            a2.loglog(xs, nm, "o-", color=col, label=f"{name} fine-tuned", ms=3)
            if c.kgd_sizes:
                a2.loglog(c.kgd_sizes, c.kgd["nmse"], "s--", color=col, ms=3, alpha=0.8,
                          label=f"{name} kernel GD")
            b = betas.get(c.task)
            if b and b > 0 and np.all(nm > 0):
                r = 2 * b / (2 * b + 1)
                a2.loglog(xs, _anchor(xs, nm, r), ":", color=col, lw=1.5, label=f"{name} rate N^-{r:.2f} (beta)")
        else:
            m, s = np.asarray(c.metrics["accuracy"]), np.asarray(c.sd["accuracy"])
            a1.plot(xs, m, "o-", color=col, label=f"{name} fine-tuned", ms=3)
            a1.fill_between(xs, m - s, m + s, color=col, alpha=0.15)
            if c.kgd_sizes:
                a1.plot(c.kgd_sizes, c.kgd["accuracy"], "s--", color=col, ms=3, alpha=0.8,
                        label=f"{name} kernel GD")
            f, fs = np.asarray(c.metrics["f1"]), np.asarray(c.sd["f1"])
            a2.plot(xs, f, "o-", color=col, label=name, ms=3)
            a2.fill_between(xs, f - fs, f + fs, color=col, alpha=0.15)
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xlabel("training samples", fontsize=9)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=6)
        sizes = sorted({x for c in curves for x in c.sizes})
        if sizes:
            ax.set_xticks(sizes)
            ax.set_xticklabels([str(x) for x in sizes], fontsize=7)
            ax.minorticks_off()
    if kind == "regression":
        a1.set_ylabel("test MSE (raw scale)", fontsize=9)
        a2.set_ylabel("test MSE / Var(y_test)", fontsize=9)
    else:
        a1.set_ylabel("test accuracy", fontsize=9)
        a2.set_ylabel("test F1", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def stopping_figure(rows: Sequence[StopLike], title: str) -> bytes:
    """T_hat and the hold-out step against the oracle step on the kernel-GD path (log-log, diagonal = oracle)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ok = [(r.t_hat, r.t_holdout, r.t_oracle) for r in rows if r.t_hat is not None]
    if ok:
        o = np.array([max(t_or, 1) for _, _, t_or in ok])
        ax.loglog(o, [max(t_hat, 1) for t_hat, _, _ in ok], "o", ms=4, label="RWY T_hat")
        ax.loglog(o, [max(t_ho, 1) for _, t_ho, _ in ok], "x", ms=5, label="hold-out")
        lo, hi = 1, max(o.max(), max(max(t_hat, t_ho) for t_hat, t_ho, _ in ok)) * 2
        ax.plot([lo, hi], [lo, hi], "k:", lw=1, label="= oracle")
    ax.set_xlabel("oracle step (best test MSE)", fontsize=9)
    ax.set_ylabel("stopping step", fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return _png(fig)


def rankings_figure(eff: Sequence[EfficiencyLike], title: str) -> bytes:
    """beta (paper estimator) against the area under the scale-free learning curve, one point per task."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for i, e in enumerate(eff):
        ax.plot(e.beta, e.auc, "o", color=f"C{i}")
        ax.annotate(label(e.task), (e.beta, e.auc), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("beta (paper estimator, mean over draws)", fontsize=9)
    ax.set_ylabel("sample efficiency: mean score over log2 n", fontsize=9)
    ax.grid(True, alpha=0.25)
    ax.set_title(title, fontsize=9)
    return _png(fig)


def taskvec_figure(names: list[str], cosine: list[list[float]], normalised: dict[str, float], title: str) -> bytes:
    """Paper Figure 3: task-vector cosine heatmap (left) and the merged model's normalised accuracy (right)."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    c = np.asarray(cosine, dtype=np.float64)
    finite = c[np.isfinite(c)]  # NaN where a task vector is zero
    im = a1.imshow(c, vmin=min(0.0, float(finite.min())) if finite.size else 0.0, vmax=1.0, cmap="viridis")
    a1.set_xticks(range(len(names)))
    a1.set_xticklabels([label(n) for n in names], fontsize=8)
    a1.set_yticks(range(len(names)))
    a1.set_yticklabels([label(n) for n in names], fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            a1.text(j, i, f"{c[i, j]:.2f}", ha="center", va="center", fontsize=8, color="w" if c[i, j] < 0.6 else "k")
    fig.colorbar(im, ax=a1, fraction=0.046)
    a1.set_title("cosine similarity of task vectors", fontsize=9)
    ts = list(normalised)
    a2.bar([label(t) for t in ts], [normalised[t] for t in ts], color=[f"C{i}" for i in range(len(ts))])
    a2.axhline(1.0, color="k", lw=0.8, ls=":")
    a2.set_ylabel("normalised accuracy (merged / fine-tuned)", fontsize=9)
    a2.set_title("task addition", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _png(fig)
