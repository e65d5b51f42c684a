"""Bias and interval coverage of the beta estimators on kernels whose operator spectrum is known in closed form.

    python -m ntkft.spectrum.validate --out docs/results/efficiency/estimators.md [--sizes 200,800] [--reps 20,8]

Kernels on x ~ U[0, 1]: K(x, x') = sum_k mu_k 2 cos(k pi x) cos(k pi x'), whose operator eigenvalues are mu_k
exactly (the cosines are orthonormal); the series is summed to J = 8 N terms and its tail sum_{k>J} mu_k added on
the diagonal (high frequencies are white noise at N points). Families, each with asymptotic decay k^(-2 beta):
- power: mu_k = k^(-2 beta);
- shifted: mu_k = (k + 5)^(-2 beta) (a power law only asymptotically: a flat start);
- spiked: mu_k = k^(-2 beta), the first 3 times 20 (large leading eigenvalues on a 3-dimensional space,
  lambda_1/lambda_2 like real eNTKs').
Estimators: `beta` (the headline, scale-matched with a fitted index shift, `subsample_ci`), the previous default
(scale-matched without the shift), the paper's eq 31-32 fit and the window fit. Bias = mean over replicate kernels
(fresh x each) minus beta; coverage = share of 90% intervals containing beta. The per-kernel rows go to a JSONL
beside the table (not committed: regenerate with this command)."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import zeta
from scipy.stats import binomtest

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
    mu, tail = spectrum(family, beta, 8 * n)
    f = np.sqrt(2 * mu)[None, :] * np.cos(np.pi * np.outer(x, np.arange(1, len(mu) + 1)))
    out: Array = f @ f.T + tail * np.eye(n)
    return out


def one(family: str, beta: float, n: int, seed: int, draws: int) -> dict[str, Any]:
    """Every estimator on one kernel."""
    k = kernel(family, beta, n, seed)
    lams = eigenvalues(k)
    new = subsample_ci(k, draws=draws, seed=seed, lams=lams)
    old = subsample_ci(k, draws=draws if n <= 400 else 0, seed=seed, lams=lams, shift=False)
    paper = paper_beta(lams)
    return {"family": family, "beta": beta, "n": n, "seed": seed, "ntkft": new.beta, "low": new.low, "high": new.high,
            "shift": new.shift, "old": old.beta, "old_low": old.low, "old_high": old.high, "paper": paper.beta,
            "paper_r2": paper.r2, "paper_r2_centred": paper.r2_centred, "window": window_fit(lams).beta}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell (family, beta, N): bias / beta of each estimator, coverage and width of the 90% intervals."""
    cells: dict[tuple[str, float, int], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["family"], r["beta"], r["n"]), []).append(r)
    out = []
    for (fam, beta, n), rs in sorted(cells.items()):
        def rel(key: str, rs: list[dict[str, Any]] = rs, beta: float = beta) -> float:
            return float(np.mean([r[key] for r in rs]) - beta) / beta

        def cover(lo: str, hi: str, rs: list[dict[str, Any]] = rs, beta: float = beta) -> float | None:
            ok = [r for r in rs if r[lo] is not None]
            return float(np.mean([r[lo] <= beta <= r[hi] for r in ok])) if ok else None

        widths = [r["high"] - r["low"] for r in rs if r["low"] is not None]
        out.append({"family": fam, "beta": beta, "n": n, "reps": len(rs), "bias_ntkft": rel("ntkft"),
                    "sd_ntkft": float(np.std([r["ntkft"] for r in rs], ddof=1)) / beta if len(rs) > 1 else None,
                    "coverage": cover("low", "high"), "width": float(np.median(widths)) if widths else None,
                    "hits": sum(r["low"] <= beta <= r["high"] for r in rs if r["low"] is not None),
                    "intervals": len(widths),
                    "bias_old": rel("old"), "coverage_old": cover("old_low", "old_high"), "bias_paper": rel("paper"),
                    "bias_window": rel("window"), "paper_r2": float(np.mean([r["paper_r2"] for r in rs])),
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


def table(summary: list[dict[str, Any]], minutes: float, command: str) -> str:
    """The committed Markdown page."""
    big = [s for s in summary if s["n"] >= 800]
    ok = sum(abs(s["bias_ntkft"]) <= 0.1 for s in big)
    cov = [s for s in summary if s["coverage"] is not None and s["reps"] >= 6]  # 1-2 kernels say nothing of coverage
    inside = [s for s in cov if 0.85 <= s["coverage"] <= 0.95]
    low = [f"{s['family']} {s['beta']:g} N={s['n']} ({s['coverage']:.0%})" for s in cov if s["coverage"] < 0.85]
    off = [f"{s['family']} {s['beta']:g} N={s['n']} ({s['hits']}/{s['intervals']})" for s in cov
           if not consistent(s["hits"], s["intervals"])]
    spiked3 = [s for s in summary if s["family"] == "spiked" and s["beta"] == 3 and s["n"] <= 200]
    old200 = [s["coverage_old"] for s in summary if s["family"] != "power" and s["n"] == 200
              and s.get("coverage_old") is not None]

    def fam_big(family: str) -> list[dict[str, Any]]:
        return [s for s in big if s["family"] == family]
    lines = [
        "# Beta estimators on closed-form kernels: bias and 90% interval coverage", "",
        f"Made by `{command}` ({minutes:.0f} min on the 2-core CPU). Kernels and estimators: the docstring of "
        "`src/ntkft/spectrum/validate.py`. Bias and sd in units of beta (target |bias| <= 0.1 at N >= 800); coverage = "
        "share of 90% intervals containing beta (target 85-95%); width = median interval width (absolute).", "",
        f"- `beta` (the headline, `ntkft.estimate_beta`: scale-matched, index shift fitted): |bias| <= 0.1 beta in "
        f"{ok}/{len(big)} cells at N >= 800 (worst {max(abs(s['bias_ntkft']) for s in big):.3f}).",
        f"- Its 90% interval (cells with >= 6 kernels) covers 85-95% in {len(inside)}/{len(cov)} cells; above 95% (too "
        f"wide) in {sum(s['coverage'] > 0.95 for s in cov)}; below 85% in {len(low)}: {', '.join(low) or 'none'}. "
        "The interval's subsamples refit the index shift, their spread is scaled from N/2 to N by the calibrated rate "
        "and the bias change from N/2 to N is added (`ntkft.spectrum.matched.interval`; its calibration: "
        "estimators-coverage.md). Cells of 6 kernels tell coverage only to +-20%, of 20 to +-7%. The coverage target "
        f"is **{'met' if cov and len(inside) == len(cov) else 'not met'} in every cell**. Counting noise alone puts a "
        "perfectly calibrated interval outside 85-95% in about a third of cells of 20 kernels, so the page also tests "
        f"each cell: coverage is consistent with 90% (exact two-sided binomial test at 5%) in {len(cov) - len(off)}/"
        f"{len(cov)} cells; not in {', '.join(off) or 'none'}.",
        f"- Spiked beta = 3 at N <= 200 fails (bias {_span(spiked3, 'bias_ntkft')}): only ~28 eigenvalues lie above "
        "the numerical floor (1e-10 lambda_1), too few to fit past three spikes.",
        f"- previous default (scale-matched, no shift): {sum(abs(s['bias_old']) <= 0.1 for s in big)}/{len(big)} cells "
        f"at N >= 800 (shifted {_span(fam_big('shifted'), 'bias_old')}, spiked {_span(fam_big('spiked'), 'bias_old')}; "
        f"its interval covered none of the kernels in {sum(c == 0 for c in old200)} of the {len(old200)} shifted and "
        f"spiked cells at N = 200); paper (eq 31-32): {sum(abs(s['bias_paper']) <= 0.1 for s in big)}/{len(big)}; window fit: "
        f"{sum(abs(s['bias_window']) <= 0.1 for s in big)}/{len(big)}.",
        "- The paper's R^2 is uncentred (no intercept, total = sum of y^2); centred it is lower, both shown.", "",
        "| family | beta | N | reps | bias beta | sd | coverage | width | bias old | cov. old | bias paper "
        "| bias window | paper R^2 | centred R^2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(f"| {s['family']} | {s['beta']:g} | {s['n']} | {s['reps']} | {_f(s['bias_ntkft'])} | "
                     f"{_f(s['sd_ntkft'], '.3f')} | {_f(s['coverage'], '.0%')} | {_f(s['width'], '.3f')} | "
                     f"{_f(s['bias_old'])} | {_f(s['coverage_old'], '.0%')} | {_f(s['bias_paper'])} | "
                     f"{_f(s['bias_window'])} | {s['paper_r2']:.3f} | {s['paper_r2_centred']:.3f} |")
    return "\n".join(lines) + "\n"


def real_section(res: dict[str, Any], source: str) -> str:
    """The real-eNTK check (bench/beta_draws.py): the interval per draw against the spread of beta over draws."""
    f = res["full"]
    full_ci = f"[{f['low']:.3f}, {f['high']:.3f}]" if f["low"] is not None else "(no interval)"
    return "\n".join([
        "", "## On a real eNTK: the interval against the spread over disjoint draws", "",
        f"{res['model']} on {res['task']}: one eNTK of N = {res['N']} training rows split into {res['draws']} disjoint "
        f"draws of {res['n_per_draw']} rows (source: `{source}`, made by `bench/beta_draws.py`).", "",
        f"- beta over the draws: mean {res['beta_mean']:.3f}, sd {res['beta_sd']:.3f}.",
        f"- the 90% interval of one draw: median half-width {res['half_width_median']:.3f}, i.e. an implied sd of "
        f"{res['implied_sd']:.3f} ({res['implied_sd'] / res['beta_sd']:.2f}x the sd over draws); it contains the "
        f"mean over draws in {res['coverage_of_mean']:.0%} of the draws.",
        f"- beta of the whole N = {res['N']} kernel: {f['beta']:.3f} {full_ci}, index shift {f['shift']:+.2f}: "
        f"{(f['beta'] - res['beta_mean']) / res['beta_sd']:+.1f} sd of the draws away from their mean. beta read at "
        "different N covers different indices k, and on a real eNTK the local decay still changes there: it is not "
        "a (shifted) power law over these indices, so compare betas only at one N (the interval does not cover "
        "this).", ""])


def main(argv: list[str] | None = None) -> None:
    """Run the grid (resumable: rows already in the JSONL are kept) and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results/efficiency/estimators.md"))
    ap.add_argument("--rows", type=Path, default=None, help="per-kernel JSONL (default: beside --out, .jsonl)")
    ap.add_argument("--sizes", default="200,800")
    ap.add_argument("--reps", default="20,8", help="replicate kernels per cell, one per size")
    ap.add_argument("--draws", type=int, default=40, help="subsamples per interval")
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
    with rows_path.open("a") as fh:
        for n, rep in zip(sizes, reps):
            for seed in range(rep):
                for fam in families:
                    for beta in betas:
                        if (fam, beta, n, seed) in done:
                            continue
                        row = one(fam, beta, n, seed, args.draws)
                        rows.append(row)
                        fh.write(json.dumps(row) + "\n")
                        fh.flush()
                        print(f"{fam} beta={beta} N={n} seed={seed}: {row['ntkft']:.3f} [{row['low']}, {row['high']}] "
                              f"old {row['old']:.3f} paper {row['paper']:.3f}", flush=True)
    cmd = f"python -m ntkft.spectrum.validate --sizes {args.sizes} --reps {args.reps} --draws {args.draws}"
    cmd += f" --betas {args.betas}" if betas != list(BETAS) else ""
    cmd += f" --families {args.families}" if families != list(FAMILIES) else ""
    page = table(summarise(rows), args.minutes if args.minutes is not None else (time.time() - t0) / 60, cmd)
    if args.real is not None:
        page += real_section(json.loads(args.real.read_text()), str(args.real))
    args.out.write_text(page)


if __name__ == "__main__":
    main()
