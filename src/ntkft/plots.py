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


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    _fig().close(fig)
    return Path(path)


def spectrum_plot(reports: Mapping[str, SpectrumReport] | Sequence[SpectrumReport], path: str | Path,
                  title: str = "eNTK eigenvalue decay") -> Path:
    """Log-log eigenvalues of K/N per kernel, with the scale-matched beta (solid, on the index range it measures,
    labelled with its interval) and the descriptive window fit (dashed) drawn over them."""
    items = list(reports.items()) if isinstance(reports, Mapping) else [(r.name or f"kernel {i + 1}", r)
                                                                        for i, r in enumerate(reports)]
    plt = _fig()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for i, (name, rep) in enumerate(items):
        lams = np.asarray(rep.eigenvalues, dtype=np.float64)
        lams = lams[lams > 0]
        k = np.arange(1, len(lams) + 1)
        color = f"C{i % 10}"
        zeros = f", {rep.num_zero} zero" if rep.num_zero else ""
        ax.loglog(k, lams, "o", ms=3, color=color, label=f"{name} (N={rep.n}{zeros})")
        b = rep.beta
        lo_k = max(1.0, b.k_min * b.m_estimate / rep.n)
        kk = np.geomspace(lo_k, b.k_max, 50)
        win = np.arange(b.k_min, b.k_max + 1)
        anchor = float(np.exp(np.mean(np.log(lams[win - 1]) + 2 * b.beta * np.log(win))))
        ci = f" [{b.low:.3f}, {b.high:.3f}]" if b.low is not None and b.high is not None else ""
        ax.loglog(kk, anchor * kk ** (-2 * b.beta), "-", color=color, lw=1.4,
                  label=f"{name}: beta={b.beta:.3f}{ci} (scale-matched)")
        w = rep.beta_window
        kw = np.arange(w.k_min, w.k_max + 1)
        ax.loglog(kw, np.exp(w.intercept - 2 * w.beta * np.log(kw)), "--", color=color, lw=1.0, alpha=0.8,
                  label=f"{name}: window fit beta={w.beta:.3f}")
    ax.set_xlabel("k")
    ax.set_ylabel("eigenvalue of K/N")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def curve_plot(xs, series: dict[str, tuple], path: str | Path, xlabel: str, ylabel: str, title: str = "",
               logx: bool = False, logy: bool = False) -> Path:
    """Lines with optional bands: series[name] = (mean, low, high) or (mean,)."""
    plt = _fig()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for i, (name, s) in enumerate(series.items()):
        ax.plot(xs, s[0], "o-", color=f"C{i % 10}", label=name, ms=3)
        if len(s) == 3:
            ax.fill_between(xs, s[1], s[2], color=f"C{i % 10}", alpha=0.2)
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
