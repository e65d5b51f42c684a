"""Figures of the theory lab (PNG via ntkft.plots' helpers): log-log panels with fitted and predicted slopes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..plots import _fig, _save
from ..spectrum.decay import DecayFit
from .fits import SlopeFit


@dataclass
class Panel:
    """One log-log panel: every seed a point (x, y), the fitted slope and the predicted one (a reference line)."""

    title: str
    x: Sequence[float]
    y: Sequence[float]
    fit: SlopeFit | None = None
    predicted: float | None = None
    ylabel: str = ""


def scaling_panels(panels: list[Panel], path: str | Path, xlabel: str = "width n", title: str = "",
                   ncols: int = 3) -> Path:
    """One log-log panel per quantity, with the points, their geometric means, the fit and the predicted slope."""
    plt = _fig()
    from matplotlib.ticker import LogFormatterSciNotation, NullLocator

    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, p in zip(axes.flat, panels):
        x, y = np.asarray(p.x, dtype=float), np.asarray(p.y, dtype=float)
        ok = y > 0
        ax.loglog(x[ok], y[ok], "o", ms=3.5, alpha=0.6, color="C0", label="per seed")
        xs = np.unique(x[ok])
        means = [np.exp(np.mean(np.log(y[ok][x[ok] == v]))) for v in xs]
        ax.loglog(xs, means, "-", color="C0", lw=1)
        f = p.fit
        if f:
            xx = np.array([f.x_min, f.x_max])
            ax.loglog(xx, np.exp(f.intercept) * xx ** f.slope, "--", color="C3",
                      label=f"fit {f.slope:.2f} [{f.low:.2f}, {f.high:.2f}]")
        if p.predicted is not None and len(xs):
            x0, y0 = xs[0], means[0]
            ax.loglog(xs, y0 * (xs / x0) ** p.predicted, ":", color="k", label=f"slope {p.predicted:.3g}")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f"{v:g}" for v in xs], fontsize=7)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_minor_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        ax.tick_params(axis="y", which="both", labelsize=7)
        ax.set_title(p.title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(p.ylabel, fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6.5)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def lines(xs: Sequence[float], series: dict[str, tuple[Any, ...]], path: str | Path, xlabel: str, ylabel: str, title: str = "",
          logx: bool = True, logy: bool = False) -> Path:
    """Mean lines with +-1 sd bands: series[name] = (mean, sd) or (mean, sd, color, dashed); dashed lines get no band."""
    plt = _fig()
    from matplotlib.ticker import NullLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (name, s) in enumerate(series.items()):
        mean, sd = np.asarray(s[0], dtype=float), np.asarray(s[1], dtype=float)
        color, dashed = (s[2], s[3]) if len(s) == 4 else (f"C{i % 10}", False)
        ax.plot(xs, mean, "o--" if dashed else "o-", ms=3, color=color, label=name, lw=1 if dashed else 1.5)
        if not dashed:
            ax.fill_between(xs, mean - sd, mean + sd, color=color, alpha=0.12)
    if logx:
        ax.set_xscale("log")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f"{v:g}" for v in xs])
        ax.xaxis.set_minor_locator(NullLocator())
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def spectrum(lams: Sequence[float], fit: DecayFit, path: str | Path, title: str) -> Path:
    """Eigenvalues of K/N on log-log axes with the fitted line log lambda = intercept - 2 beta log k on its window."""
    plt = _fig()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    pos = np.asarray(lams, dtype=float)
    pos = pos[pos > 0]
    ax.loglog(np.arange(1, len(pos) + 1), pos, "o", ms=3, label="eigenvalues of K_PT / N")
    kk = np.arange(fit.k_min, fit.k_max + 1)
    ax.loglog(kk, np.exp(fit.intercept - 2 * fit.beta * np.log(kk)), "-", color="C3",
              label=f"fit k={fit.k_min}..{fit.k_max}: beta = {fit.beta:.3f}")
    ax.set_xlabel("k")
    ax.set_ylabel("eigenvalue of K/N")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
