"""Figures as PNG (matplotlib, headless): one function per figure kind, plain arrays or result objects in."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._io import atomic_write_bytes

if TYPE_CHECKING:
    from .spectrum import SpectrumReport


def _fig() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    _fig().close(fig)
    return Path(path)


def spectrum_plot(reports: Mapping[str, SpectrumReport] | Sequence[SpectrumReport], path: str | Path,
                  title: str = "eNTK eigenvalue decay") -> Path:
    """Left: log-log eigenvalues of K/N per kernel (beta and its interval in the legend; no line: beta is the
    operator's decay, which the finite-N eigenvalues only approximate). Right: the points beta is fitted on (the
    scale-matched local decay at each k of the window) and the fitted line through them (flat at beta for a pure
    power law; rising with an index shift c in mu_k = (k + c)^(-2 beta))."""
    items = list(reports.items()) if isinstance(reports, Mapping) else [(r.name or f"kernel {i + 1}", r)
                                                                        for i, r in enumerate(reports)]
    plt = _fig()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11.5, 4.6))
    for i, (name, rep) in enumerate(items):
        lams = np.asarray(rep.eigenvalues, dtype=np.float64)
        lams = lams[lams > 0]
        k = np.arange(1, len(lams) + 1)
        color = f"C{i % 10}"
        zeros = f", {rep.num_zero} zero" if rep.num_zero else ""
        b = rep.beta
        ci = f" [{b.low:.3f}, {b.high:.3f}]" if b.low is not None and b.high is not None else ""
        ax.loglog(k, lams, "o", ms=3, color=color, label=f"{name} (N={rep.n}{zeros}): beta={b.beta:.3f}{ci}")
        if b.points:
            ks = np.arange(b.k_min, b.k_max + 1)
            start = b.fit_k_min or b.k_min
            used = ks >= start
            ax2.semilogx(ks[used], np.asarray(b.points)[used], "o", ms=2.5, color=color, alpha=0.6,
                         label=f"{name}: matched points")
            if not used.all():
                ax2.semilogx(ks[~used], np.asarray(b.points)[~used], "o", ms=3, mfc="none", color=color, alpha=0.6,
                             label=f"{name}: not fitted (leading eigenvalues)")
            shift = f", c={b.shift:+.1f}" if b.shift else ""
            ax2.semilogx(ks[used], b.line(), "-", color=color, lw=1.6, label=f"{name}: fit, beta={b.beta:.3f}{shift}")
    ax.set_xlabel("k")
    ax.set_ylabel("eigenvalue of K/N")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax2.set_xlabel("k (fit window)")
    ax2.set_ylabel("local decay (log lambda_rk - log lambda_k) / (2 log 1/r)")
    ax2.set_title("what beta is fitted on", fontsize=10)
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def curve_plot(xs: Any, series: dict[str, tuple[Any, ...]], path: str | Path, xlabel: str, ylabel: str, title: str = "",
               logx: bool = False, logy: bool = False, baselines: dict[str, Any] | None = None) -> Path:
    """Lines with optional bands: series[name] = (mean, low, high) or (mean,); baselines[name] (values at xs): the
    constant predictor of that series, a dashed line in its colour."""
    plt = _fig()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for i, (name, s) in enumerate(series.items()):
        ax.plot(xs, s[0], "o-", color=f"C{i % 10}", label=name, ms=3)
        if len(s) == 3:
            ax.fill_between(xs, s[1], s[2], color=f"C{i % 10}", alpha=0.2)
        if baselines and name in baselines:
            ax.plot(xs, baselines[name], "--", color=f"C{i % 10}", lw=1, label=f"{name}: constant predictor")
    if logx:
        ax.set_xscale("log")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([str(x) for x in xs])
        ax.minorticks_off()
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
