"""`ntkft efficiency`: issue 27's powered experiment (does the eNTK predict fine-tuning sample efficiency?)."""

from __future__ import annotations

import math

import typer

from ._common import app


@app.command()
def efficiency(config: str = typer.Option("configs/efficiency-cpu.yaml", "--config", help="experiment config (YAML)"),
               out: str = typer.Option("runs/eff", "--out", help="run folder (units cache here; a rerun resumes)"),
               docs: str | None = typer.Option(None, "--docs", help="also write summary.json, tasks.csv, README.md "
                                                                     "and figures/ here (docs/results/efficiency)"),
               pool: int | None = typer.Option(None, "--pool", help="override the kernel pool N"),
               overwrite: bool = typer.Option(False, "--overwrite", help="replace another run in --out"),
               data_dir: str | None = typer.Option(None, "--data-dir", help="task data directory (default: "
                                                                            "$NTKFT_DATA_DIR, then ./data)")) -> None:
    """The eNTK of the fine-tuned model per input set, kernel GD (tier a) and fine-tuning (tier b) on every task
    variant, the primary test stated in the config and its verdict; resumable per unit."""
    from ..config import load_config
    from ..efficiency import EfficiencyConfig, run

    cfg = load_config(EfficiencyConfig, config, {"pool": pool})
    res = run(cfg, out, data_dir=data_dir, overwrite=overwrite, docs=docs)
    s = res["summary"]
    pt = s.primary_test
    fmt = (lambda x: "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}")  # noqa: E731
    for r in s.tasks:
        typer.echo(f"{r.name:>18}: beta {fmt(r.beta.ntkft)} -> predicted rate {fmt(r.predicted_rate)}; measured rate "
                   f"{fmt(r.rate.value)} [{fmt(r.rate.ci[0])}, {fmt(r.rate.ci[1])}], n_half {fmt(r.n_half.value)}")
    typer.echo(f"primary test: Spearman rho {fmt(pt.rho)}, one-sided p {fmt(pt.p)} (k={pt.k}); power at rho "
               f"0.5/0.7/0.8: {pt.power.p05:.2f}/{pt.power.p07:.2f}/{pt.power.p08:.2f}")
    typer.echo(f"verdict: {s.verdict}; {len(res['computed'])} units computed, {len(res['reused'])} reused; "
               f"wrote {out}/summary.json, README.md, figures/")
