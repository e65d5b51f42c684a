"""Coverage of beta's 90% interval on the closed-form kernels of ntkft.spectrum.validate, old rule against new, on
one set of subsamples per kernel (reduced grid; docs/results/efficiency/estimators-coverage.md).

    PYTHONPATH=src python bench/beta_coverage.py ROWS.jsonl N REPS [DRAWS]   # add N x REPS kernels per family x beta
    PYTHONPATH=src python bench/beta_coverage.py ROWS.jsonl --table OUT.md   # the table from the rows

Per kernel: the estimate (ntkft.estimate_beta's), then DRAWS (default 60) random N/2-subsets, each estimated twice
from the same matched points: with the estimate's shift and start (the old interval's subsamples) and with shift and
start refitted (the new). The N/4 fits kept in the rows were only used to try a per-kernel rate (not adopted).
- old: beta +- sqrt(b/(N - b)) * q90 |beta_b - beta| (fixed shift; the rule before this change);
- new: ntkft.spectrum.matched.interval (refitted shift, sd scaled by the calibrated rate, plus the bias term).
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ntkft.spectrum import matched as M
from ntkft.spectrum.eig import FLOOR
from ntkft.spectrum.validate import BETAS, FAMILIES, consistent, kernel


def one(fam: str, beta: float, n: int, seed: int, draws: int) -> dict[str, Any]:
    """The estimate and its subsample estimates (fixed and refitted shift) at N/2 and N/4 on one kernel."""
    kk = kernel(fam, beta, n, seed)
    t0 = time.process_time()
    ci = M.subsample_ci(kk, draws=0, seed=seed)
    rng = np.random.default_rng(seed + 12345)
    n_pos, a, b = ci.num_positive, ci.k_min, ci.k_max
    out: dict[str, Any] = {"family": fam, "beta": beta, "n": n, "seed": seed, "est": ci.beta, "shift": ci.shift,
                           "start": ci.fit_k_min, "a": a, "b": b, "n_pos": n_pos}
    for tag, size in (("h", M._half(n)), ("q", M._half(M._half(n)))):
        b_sub = min(b * size // n, min(size, n_pos) // 2)
        a_sub = max(a, math.ceil(size / M._half(size) - 1e-12))
        if b_sub < a_sub:
            continue
        idx = M._subsets(rng, n, size, (draws,))
        refit, c, _, d = M._estimate(kk, idx, int(np.clip(4000 // size, 4, 20)), rng, a_sub, b_sub, FLOOR)
        fixed = M.fit_shift(d, M._half(size) / size, a_sub, b_sub, True, (ci.shift, ci.fit_k_min))[0]
        out[tag] = {"size": size, "fixed": fixed.tolist(), "refit": refit.tolist(), "c": c.tolist()}
    out["cpu"] = time.process_time() - t0
    return out


def intervals(row: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Old and new 90% intervals of one row (absent where the subsamples gave too few estimates)."""
    out: dict[str, tuple[float, float]] = {}
    h, n, est = row.get("h"), row["n"], row["est"]
    if h is None:
        return out
    fixed, refit = (np.asarray(h[k], dtype=float) for k in ("fixed", "refit"))
    fixed, refit = fixed[np.isfinite(fixed)], refit[np.isfinite(refit)]
    if len(fixed) >= 10:
        half = math.sqrt(h["size"] / (n - h["size"])) * float(np.quantile(np.abs(fixed - est), 0.9))
        out["old"] = (est - half, est + half)
    if len(refit) >= 10:
        out["new"] = M.interval(est, refit, n, h["size"], 0.9)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per cell (family, beta, N) coverage and median width, old and new, and the oracle width."""
    cells: dict[tuple[str, float, int], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["family"], r["beta"], r["n"]), []).append(r)
    lines = ["| family | beta | N | reps | bias | sd | oracle width | cov. old | width old | cov. new | width new |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = {"old": [0, 0, 0, 0, 0], "new": [0, 0, 0, 0, 0]}  # in band, under, over, cells, binomially consistent
    ratios: list[float] = []
    to_oracle: dict[str, list[float]] = {"old": [], "new": []}
    for (fam, beta, n), rs in sorted(cells.items()):
        err = np.array([r["est"] - beta for r in rs])
        oracle = 2 * float(np.quantile(np.abs(err), 0.9))
        cols = []
        for rule in ("old", "new"):
            got = [iv[rule] for iv in map(intervals, rs) if rule in iv]
            if not got:
                cols += ["-", "-"]
                continue
            cov = float(np.mean([lo <= beta <= hi for lo, hi in got]))
            width = float(np.median([hi - lo for lo, hi in got]))
            cols += [f"{cov:.0%}", f"{width:.3f}"]
            to_oracle[rule].append(width / oracle)
            s = summary[rule]
            s[0] += 0.85 - 1e-9 <= cov <= 0.95 + 1e-9
            s[1] += cov < 0.85 - 1e-9
            s[2] += cov > 0.95 + 1e-9
            s[3] += 1
            s[4] += consistent(sum(lo <= beta <= hi for lo, hi in got), len(got))
            if rule == "new" and cols[1] != "-":
                ratios.append(width / float(cols[1]))
        lines.append(f"| {fam} | {beta:g} | {n} | {len(rs)} | {err.mean():+.3f} | {err.std(ddof=1):.3f} | "
                     f"{oracle:.3f} | " + " | ".join(cols) + " |")
    head = [f"- {rule}: 85-95% in {s[0]}/{s[3]} cells, below 85% in {s[1]}, above 95% in {s[2]}; coverage consistent "
            f"with 90% (exact binomial test, 5%) in {s[4]}/{s[3]}; median width / oracle width "
            f"{np.median(to_oracle[rule]):.2f}" for rule, s in summary.items()]
    head.append(f"- median over cells of width new / width old: {np.median(ratios):.2f}")
    return "\n".join(head + [""] + lines) + "\n"


def main() -> None:
    path = Path(sys.argv[1])
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    if sys.argv[2] == "--table":
        Path(sys.argv[3]).write_text(table(rows))
        return
    n, reps = int(sys.argv[2]), int(sys.argv[3])
    draws = int(sys.argv[4]) if len(sys.argv) > 4 else 60
    done = {(r["family"], r["beta"], r["n"], r["seed"]) for r in rows}
    with path.open("a") as fh:
        for seed in range(reps):
            for fam in FAMILIES:
                for beta in BETAS:
                    if (fam, beta, n, seed) not in done:
                        fh.write(json.dumps(one(fam, beta, n, seed, draws)) + "\n")
                        fh.flush()


if __name__ == "__main__":
    main()
