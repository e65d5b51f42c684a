"""Figures as PNG (matplotlib, headless): one function per figure kind, plain arrays in."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ._io import atomic_write_bytes


def _fig():
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


def spectrum_plot(curves: dict[str, dict], path: str | Path, title: str = "eNTK eigenvalue decay") -> Path:
    """Log-log eigenvalues per task; each curve: {'lams': [...], 'fits': [{'beta','intercept','k_min','k_max',
    'label'}]} with fitted lines log lambda = intercept - 2 beta log k drawn on their windows."""
    plt = _fig()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for i, (name, c) in enumerate(curves.items()):
        lams = np.asarray(c["lams"], dtype=np.float64)
        lams = lams[lams > 0]
        k = np.arange(1, len(lams) + 1)
        color = f"C{i % 10}"
        ax.loglog(k, lams, "o", ms=3, color=color, label=name)
        for j, f in enumerate(c.get("fits", [])):
            kk = np.arange(f["k_min"], f["k_max"] + 1)
            icpt = f["intercept"] if f.get("intercept") else np.log(lams[0])
            ax.loglog(kk, np.exp(icpt - 2 * f["beta"] * np.log(kk)), ["-", "--", ":"][j % 3], color=color, lw=1.2,
                      label=f"{name}: {f.get('label', 'fit')} beta={f['beta']:.3f}")
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
