"""Task-vector figures (matplotlib, headless): one function per figure kind, plain numbers in."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..plots import _fig, _save


def heatmap(matrix: Any, rows: Sequence[str], cols: Sequence[str], path: str | Path, title: str, label: str = "",
            vmin: float | None = None, vmax: float | None = None, cmap: str = "viridis", fmt: str = "{:.2f}",
            xlabel: str = "", ylabel: str = "") -> Path:
    """An annotated heatmap (cosine matrix, disentanglement error grid)."""
    plt = _fig()
    m = np.asarray(matrix, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * max(3, len(cols)), 1.0 + 0.6 * max(3, len(rows))))
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([str(c) for c in cols], rotation=45 if max(len(str(c)) for c in cols) > 4 else 0, ha="right")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([str(r) for r in rows])
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            v = m[i, j]
            r, g, b, _ = im.cmap(im.norm(v)) if np.isfinite(v) else (1.0, 1.0, 1.0, 1.0)
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # text colour readable on the cell's colour
            ax.text(j, i, "nan" if not np.isfinite(v) else fmt.format(v), ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _save(fig, path)


def lambda_curves(lambdas: Sequence[float], series: dict[str, Sequence[float]], path: str | Path, ylabel: str,
                  title: str, chosen: float | None = None, hline: float | None = None) -> Path:
    """Validation metric per task against lambda, the chosen lambda marked."""
    plt = _fig()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (name, ys) in enumerate(series.items()):
        ax.plot(lambdas, ys, "o-", ms=3, color=f"C{i % 10}", label=name)
    if chosen is not None:
        ax.axvline(chosen, color="gray", ls="--", lw=1, label=f"chosen lambda = {chosen:g}")
    if hline is not None:
        ax.axhline(hline, color="gray", ls=":", lw=1)
    ax.set_xlabel("lambda")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def bars(names: Sequence[str], groups: dict[str, Sequence[float]], path: str | Path, ylabel: str, title: str,
         hline: float | None = None) -> Path:
    """Grouped bars per task (e.g. pretrained / merged / fine-tuned metric, or normalised accuracy)."""
    plt = _fig()
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(names), 4.2))
    x = np.arange(len(names))
    w = 0.8 / max(1, len(groups))
    for i, (g, vals) in enumerate(groups.items()):
        ax.bar(x + (i - (len(groups) - 1) / 2) * w, vals, w, label=g, color=f"C{i % 10}")
    if hline is not None:
        ax.axhline(hline, color="gray", ls="--", lw=1)
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def scatter(xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], path: str | Path, xlabel: str,
            ylabel: str, title: str) -> Path:
    """One point per task pair (kernel cross-block ratio against the pair's normalised accuracy)."""
    plt = _fig()
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    ax.plot(xs, ys, "o", color="C0")
    for x, y, s in zip(xs, ys, labels):
        ax.annotate(s, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)
