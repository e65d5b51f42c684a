"""Bias and interval coverage of the beta estimators on kernels whose operator spectrum is known in closed form.

    python -m ntkft.spectrum.validate --out docs/results/efficiency/estimators.md [--sizes 200,800] [--reps 20,8]

Kernels on x ~ U[0, 1]: K(x, x') = sum_k mu_k 2 cos(k pi x) cos(k pi x'), whose operator eigenvalues are mu_k
exactly (the cosines are orthonormal); the series is summed to J = 8 N terms and its tail sum_{k>J} mu_k added on
the diagonal (high frequencies are white noise at N points). Families, each with asymptotic decay k^(-2 beta):
- power: mu_k = k^(-2 beta);
- shifted: mu_k = (k + 5)^(-2 beta) (a power law only asymptotically: a flat start);
- spiked: mu_k = k^(-2 beta), the first 3 times 20 (large leading eigenvalues on a 3-dimensional space,
  lambda_1/lambda_2 like real eNTKs').
Estimators: `beta` (the headline, scale-matched with a fitted index shift, `subsample_ci`) with its parametric
interval and, on the same estimate, the previous subsampling interval; the previous default (scale-matched without
the shift), the paper's eq 31-32 fit and the window fit (points only). Bias = mean over replicate kernels
(fresh x each) minus beta; coverage = share of 90% intervals containing beta. The per-kernel rows go to a JSONL
beside the table (not committed: regenerate with this command)."""

from __future__ import annotations

import argparse
import json
import math
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import zeta
from scipy.stats import binomtest

from .closed import TERMS_PER_POINT, cosine_kernel
from .decay import paper_beta, window_fit
from .eig import Array, eigenvalues
from .matched import subsample_ci

FAMILIES = ("power", "shifted", "spiked")
BETAS = (0.6, 1.0, 2.0, 3.0)
SHIFT = 5.0
SPIKES, SPIKE = 3, 20.0
X_STREAM = 0x6B65726E  # the points' seed stream: (X_STREAM, seed), never the estimator's default_rng(seed) (below)


def spectrum(family: str, beta: float, terms: int) -> tuple[Array, float]:
    """mu_1..mu_terms of the family and the tail sum beyond them."""
    k = np.arange(1, terms + 1, dtype=np.float64)
    if family == "shifted":
        return (k + SHIFT) ** (-2 * beta), float(zeta(2 * beta, terms + 1 + SHIFT))
    mu = k ** (-2 * beta)
    if family == "spiked":
        mu[:SPIKES] *= SPIKE
    return mu, float(zeta(2 * beta, terms + 1))


def kernel(family: str, beta: float, n: int, seed: int) -> Array:
    """One closed-form kernel on n fresh uniform points.

    The points come from their own seed stream: with default_rng(seed), the stream the estimators draw their subsets
    from at the same seed, the estimate's first half-subset was the N/2 points of smallest x (argsort of the very
    numbers x was made of), a half-interval sample whose spectrum decays faster: it biased the estimate by -0.03
    (beta 3, N 200) to -0.09 (N 800), more at larger N where fewer half-subsets are averaged (10000 // N)."""
    x = np.random.default_rng((X_STREAM, seed)).uniform(0, 1, n)
    mu, tail = spectrum(family, beta, TERMS_PER_POINT * n)
    return cosine_kernel(mu, tail, x)


def one(family: str, beta: float, n: int, seed: int, draws: int, sub_draws: int = 60) -> dict[str, Any]:
    """Every estimator on one kernel: beta with its parametric interval (`draws` simulated kernels) and the previous
    subsampling interval (`sub_draws` half-size subsamples) on the same estimate; the other estimators' points."""
    t0 = time.process_time()
    k = kernel(family, beta, n, seed)
    lams = eigenvalues(k)
    new = subsample_ci(k, draws=draws, seed=seed, lams=lams)
    t1 = time.process_time()
    sub = subsample_ci(k, draws=sub_draws if draws else 0, seed=seed, lams=lams, interval="subsample")
    old = subsample_ci(k, draws=0, seed=seed, lams=lams, shift=False)
    paper = paper_beta(lams)
    return {"family": family, "beta": beta, "n": n, "seed": seed, "ntkft": new.beta, "low": new.low, "high": new.high,
            "shift": new.shift, "sub_low": sub.low, "sub_high": sub.high, "old": old.beta, "paper": paper.beta,
            "paper_r2": paper.r2, "paper_r2_centred": paper.r2_centred, "window": window_fit(lams).beta,
            "cpu_estimate": t1 - t0}


def _one(args: tuple[str, float, int, int, int]) -> dict[str, Any]:
    return one(*args)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell (family, beta, N): bias / beta of each estimator, coverage and width of both 90% intervals."""
    cells: dict[tuple[str, float, int], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["family"], r["beta"], r["n"]), []).append(r)
    out = []
    for (fam, beta, n), rs in sorted(cells.items()):
        def rel(key: str, rs: list[dict[str, Any]] = rs, beta: float = beta) -> float:
            return float(np.mean([r[key] for r in rs]) - beta) / beta

        def cover(lo: str, hi: str, rs: list[dict[str, Any]] = rs, beta: float = beta) -> dict[str, Any]:
            ok = [r for r in rs if r.get(lo) is not None]
            hits = sum(r[lo] <= beta <= r[hi] for r in ok)
            return {"coverage": hits / len(ok) if ok else None, "hits": hits, "intervals": len(ok),
                    "width": float(np.median([r[hi] - r[lo] for r in ok])) if ok else None}

        err = np.array([r["ntkft"] - beta for r in rs])
        par, sub = cover("low", "high"), cover("sub_low", "sub_high")
        out.append({"family": fam, "beta": beta, "n": n, "reps": len(rs), "bias_ntkft": rel("ntkft"),
                    "sd_ntkft": float(np.std(err, ddof=1)) / beta if len(rs) > 1 else None,
                    **par, **{f"{k}_sub": v for k, v in sub.items()},
                    "oracle_width": 2 * float(np.quantile(np.abs(err), 0.9)),
                    "cpu": float(np.median([r.get("cpu_estimate", math.nan) for r in rs])),
                    "bias_old": rel("old"), "bias_paper": rel("paper"), "bias_window": rel("window"),
                    "paper_r2": float(np.mean([r["paper_r2"] for r in rs])),
                    "paper_r2_centred": float(np.mean([r["paper_r2_centred"] for r in rs]))})
    return out


def _f(x: float | None, fmt: str = "+.3f") -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def consistent(hits: int, reps: int, level: float = 0.9, alpha: float = 0.05) -> bool:
    """Whether `hits` of `reps` intervals holding the truth is consistent with coverage `level` (exact two-sided
    binomial test at `alpha`): what a perfectly calibrated interval passes in 1 - alpha of the cells."""
    return bool(binomtest(hits, reps, level).pvalue > alpha)


def _span(cells: list[dict[str, Any]], key: str) -> str:
    """'a to b' over the cells' values of `key` (in units of beta), or '-' when there are none."""
    vals = [c[key] for c in cells if c.get(key) is not None and math.isfinite(c[key])]
    return f"{min(vals):+.2f} to {max(vals):+.2f}" if vals else "-"


def _coverage(cells: list[dict[str, Any]], suffix: str) -> dict[str, Any]:
    """In band / below / above 85-95%, the cells below, those a binomial test rejects, median width / oracle."""
    cov = [c for c in cells if c[f"coverage{suffix}"] is not None]
    low = [c for c in cov if c[f"coverage{suffix}"] < 0.85]
    off = [c for c in cov if not consistent(c[f"hits{suffix}"], c[f"intervals{suffix}"])]
    ratio = [c[f"width{suffix}"] / c["oracle_width"] for c in cov if c["oracle_width"] > 0]
    return {"cells": len(cov), "inside": sum(0.85 <= c[f"coverage{suffix}"] <= 0.95 for c in cov),
            "above": sum(c[f"coverage{suffix}"] > 0.95 for c in cov), "low": low, "off": off,
            "ratio": float(np.median(ratio)) if ratio else math.nan}


def _names(cells: list[dict[str, Any]], suffix: str) -> str:
    return ", ".join(f"{c['family']} {c['beta']:g} N={c['n']} ({c[f'hits{suffix}']}/{c[f'intervals{suffix}']})"
                     for c in cells) or "none"


def table(summary: list[dict[str, Any]], minutes: float, command: str) -> str:
    """The committed Markdown page."""
    big = [s for s in summary if s["n"] >= 800]
    ok = sum(abs(s["bias_ntkft"]) <= 0.1 for s in big)
    cells = [s for s in summary if s["reps"] >= 6]  # 1-2 kernels say nothing of coverage
    par, sub = _coverage(cells, ""), _coverage(cells, "_sub")
    spiked3 = [s for s in summary if s["family"] == "spiked" and s["beta"] == 3 and s["n"] <= 200]
    met = "met" if par["cells"] and par["inside"] == par["cells"] else "not met"
    cpu: dict[int, list[float]] = {}
    for s in summary:
        if s["coverage"] is not None and math.isfinite(s["cpu"]):
            cpu.setdefault(s["n"], []).append(s["cpu"])

    def fam_big(family: str) -> list[dict[str, Any]]:
        return [s for s in big if s["family"] == family]
    lines = [
        "# Beta estimators on closed-form kernels: bias and 90% interval coverage", "",
        f"Made by `{command}` ({minutes:.0f} min on the 2-core CPU). Kernels and estimators: the docstring of "
        "`src/ntkft/spectrum/validate.py`. Bias and sd in units of beta (target |bias| <= 0.1 at N >= 800); coverage = "
        "share of 90% intervals containing beta (target 85-95%); width = median interval width (absolute); oracle = "
        "twice the 90% quantile of |estimate - beta| over the cell, the narrowest estimate-centred width that covers "
        "90%.", "",
        f"- `beta` (the headline, `ntkft.estimate_beta`: scale-matched, index shift fitted): |bias| <= 0.1 beta in "
        f"{ok}/{len(big)} cells at N >= 800 (worst {max((abs(s['bias_ntkft']) for s in big), default=math.nan):.3f}).",
        f"- Its 90% interval (`interval=\"parametric\"`, the default: the estimator rerun on kernels simulated at the "
        f"fitted spectrum, half-width |bias| + 1.645 sd of their estimates; cells with >= 6 kernels) covers 85-95% in "
        f"{par['inside']}/{par['cells']} cells, above 95% (too wide) in {par['above']}, below 85% in {len(par['low'])}: "
        f"{_names(par['low'], '')}. Consistent with 90% by an exact two-sided binomial test at 5% in "
        f"{par['cells'] - len(par['off'])}/{par['cells']} cells (not: {_names(par['off'], '')}); median width "
        f"{par['ratio']:.2f}x the oracle. The coverage target is **{met} in every cell**; counting noise alone "
        "puts a perfectly calibrated interval outside 85-95% in about a third "
        "of cells of 20 kernels (+-7% binomial sd), hence the test.",
        f"- The previous rule on the same kernels and estimates (`interval=\"subsample\"`: 60 half-size subsamples "
        f"refitting the shift, spread scaled to N by the rate tau = 1.75, plus the bias change from N/2 to N): 85-95% "
        f"in {sub['inside']}/{sub['cells']}, below 85% in {len(sub['low'])} ({_names(sub['low'], '_sub')}), binomially "
        f"consistent in {sub['cells'] - len(sub['off'])}/{sub['cells']}; median width {sub['ratio']:.2f}x the oracle. "
        "It assumed one rate at which the estimate's spread falls with N, where the closed-form kernels show rates from "
        "about 0.5 to 1.8 (the window and the shift fit change with N), and on real eNTKs (below) it is too narrow.",
        "- CPU seconds per estimate with its parametric interval (40 simulated kernels, one thread), median: "
        + ", ".join(f"N = {n}: {np.median(v):.1f} s" for n, v in sorted(cpu.items())) + ".",
        f"- Spiked beta = 3 at N <= 200 fails (bias {_span(spiked3, 'bias_ntkft')}): only ~28 eigenvalues lie above "
        "the numerical floor (1e-10 lambda_1), too few to fit past three spikes.",
        f"- previous default (scale-matched, no shift): {sum(abs(s['bias_old']) <= 0.1 for s in big)}/{len(big)} cells "
        f"at N >= 800 (shifted {_span(fam_big('shifted'), 'bias_old')}, spiked {_span(fam_big('spiked'), 'bias_old')}); "
        f"paper (eq 31-32): {sum(abs(s['bias_paper']) <= 0.1 for s in big)}/{len(big)}; window fit: "
        f"{sum(abs(s['bias_window']) <= 0.1 for s in big)}/{len(big)}.",
        "- The paper's R^2 is uncentred (no intercept, total = sum of y^2); centred it is lower, both shown.", "",
        "| family | beta | N | reps | bias beta | sd | coverage | width | cov. subsample | width subsample | oracle "
        "| bias old | bias paper | bias window | paper R^2 | centred R^2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(f"| {s['family']} | {s['beta']:g} | {s['n']} | {s['reps']} | {_f(s['bias_ntkft'])} | "
                     f"{_f(s['sd_ntkft'], '.3f')} | {_f(s['coverage'], '.0%')} | {_f(s['width'], '.3f')} | "
                     f"{_f(s['coverage_sub'], '.0%')} | {_f(s['width_sub'], '.3f')} | {_f(s['oracle_width'], '.3f')} | "
                     f"{_f(s['bias_old'])} | {_f(s['bias_paper'])} | "
                     f"{_f(s['bias_window'])} | {s['paper_r2']:.3f} | {s['paper_r2_centred']:.3f} |")
    return "\n".join(lines) + "\n"


def real_section(res: dict[str, Any], source: str) -> str:
    """The real-eNTK check (bench/beta_draws.py): per task, both intervals of each disjoint draw against the spread
    of beta over the draws and whether they hold the draws' mean."""
    tasks = res["tasks"]
    rules = ("parametric", "subsample")
    tot = {r: (sum(t[r]["hits"] for t in tasks), sum(t[r]["intervals"] for t in tasks)) for r in rules}
    lines = [
        "", "## On real eNTKs: the interval against the spread over disjoint draws", "",
        f"{res['model']}: the efficiency run's eNTK of N = {res['pool']} pool rows per task, split into "
        f"{res['draws']} disjoint draws of {res['n_per_draw']} rows (source: `{source}`, made by `{res['command']}`). "
        "Per draw: beta and both 90% intervals; a draw's interval should hold the mean of beta over the draws (the "
        "estimand at this N) about 90% of the time, and half its width / 1.645 (the implied sd) should be near the sd "
        "over the draws.", "",
        f"- parametric (default): holds the draws' mean in {tot['parametric'][0]}/{tot['parametric'][1]} draws; "
        f"subsample (previous rule): {tot['subsample'][0]}/{tot['subsample'][1]}.", "",
        "| task | beta over draws: mean, sd | parametric: implied sd | holds the mean | subsample: implied sd "
        "| holds the mean |", "|---|---|---|---|---|---|"]
    for t in tasks:
        p, q = t["parametric"], t["subsample"]
        lines.append(f"| {t['task']} | {t['beta_mean']:.3f}, {t['beta_sd']:.3f} | {p['implied_sd']:.3f} "
                     f"({p['implied_sd'] / t['beta_sd']:.2f}x) | {p['hits']}/{p['intervals']} | {q['implied_sd']:.3f} "
                     f"({q['implied_sd'] / t['beta_sd']:.2f}x) | {q['hits']}/{q['intervals']} |")
    lines += ["", "beta read at different N covers different indices k, and on a real eNTK the local decay still "
              "changes there: it is not a (shifted) power law over these indices, so compare betas only at one N (the "
              "interval does not cover this).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the grid (resumable: rows already in the JSONL are kept) and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results/efficiency/estimators.md"))
    ap.add_argument("--rows", type=Path, default=None, help="per-kernel JSONL (default: beside --out, .jsonl)")
    ap.add_argument("--sizes", default="200,800")
    ap.add_argument("--reps", default="20,8", help="replicate kernels per cell, one per size")
    ap.add_argument("--draws", type=int, default=40, help="simulated kernels per parametric interval")
    ap.add_argument("--interval-max-n", type=int, default=800, help="intervals only up to this N (bias beyond)")
    ap.add_argument("--workers", type=int, default=1, help="processes (one BLAS thread each)")
    ap.add_argument("--betas", default=",".join(map(str, BETAS)))
    ap.add_argument("--families", default=",".join(FAMILIES), help="a reduced grid: some of " + ",".join(FAMILIES))
    ap.add_argument("--minutes", type=float, default=None,
                    help="minutes the rows took (when regenerating the page from finished rows)")
    ap.add_argument("--real", type=Path, default=None, help="bench/beta_draws.py's JSON: add the real-eNTK section")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    reps = [int(s) for s in args.reps.split(",")]
    betas = [float(b) for b in args.betas.split(",")]
    families = [f for f in args.families.split(",") if f]
    if not families or set(families) - set(FAMILIES):
        ap.error(f"--families: choose from {','.join(FAMILIES)}, got {args.families!r}")
    rows_path = args.rows or args.out.with_suffix(".jsonl")
    rows = [json.loads(x) for x in rows_path.read_text().splitlines()] if rows_path.exists() else []
    done = {(r["family"], r["beta"], r["n"], r["seed"]) for r in rows}
    t0 = time.time()
    jobs = [(fam, beta, n, seed, args.draws if n <= args.interval_max_n else 0) for n, rep in zip(sizes, reps)
            for seed in range(rep) for fam in families for beta in betas if (fam, beta, n, seed) not in done]
    with rows_path.open("a") as fh, Pool(max(1, args.workers)) as pool:
        for row in pool.imap(_one, jobs):
            rows.append(row)
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            print(f"{row['family']} beta={row['beta']} N={row['n']} seed={row['seed']}: {row['ntkft']:.3f} "
                  f"[{row['low']}, {row['high']}] subsample [{row['sub_low']}, {row['sub_high']}] "
                  f"old {row['old']:.3f} paper {row['paper']:.3f}", flush=True)
    cmd = (f"python -m ntkft.spectrum.validate --sizes {args.sizes} --reps {args.reps} --draws {args.draws} "
           f"--interval-max-n {args.interval_max_n}")
    cmd += f" --betas {args.betas}" if betas != list(BETAS) else ""
    cmd += f" --families {args.families}" if families != list(FAMILIES) else ""
    page = table(summarise(rows), args.minutes if args.minutes is not None else (time.time() - t0) / 60, cmd)
    if args.real is not None:
        page += real_section(json.loads(args.real.read_text()), str(args.real))
    args.out.write_text(page)


if __name__ == "__main__":
    main()
