"""`ntkft reproduce` (the paper's Section 7 end to end) and `ntkft report RUN_DIR` (rebuild its report)."""

from __future__ import annotations

import inspect
import math
from typing import Any

import typer

from ..reproduce.config import ReproConfig, quick_config_path
from ._common import app, config_options, load_config, option

FLAGS = [option("out", "runs/repro", "output run folder (stages cache here; a rerun resumes)"),
         option("quick", False, "the reduced run of configs/quick.yaml (one model, few tasks and sizes; `make demo`)",
                bool),
         option("overwrite", False, "replace a stage folder whose settings differ (its files are removed only once "
                                    "the new one is complete)", bool),
         option("data_dir", None, "task data directory (default: $NTKFT_DATA_DIR, then ./data)", str | None)]


def _reproduce(cfg: ReproConfig, out: str, overwrite: bool, data_dir: str | None) -> None:
    from ..reproduce import reproduce
    from ..reproduce.rankings import RankingsResult
    from ..reproduce.spectra import SpectraResult
    from ..reproduce.taskvec import TaskVecStage

    res = reproduce(cfg, out, data_dir=data_dir, overwrite=overwrite)
    for name, sec in res.seconds.items():
        typer.echo(f"stage {name}: {sec:.0f}s")
    sp = res.stages.get("spectra")
    if isinstance(sp, SpectraResult):
        for s in sp.spectra:
            typer.echo(f"{s.model} {s.task}: beta (paper est.) {s.beta_paper_mean:.3f} +- {s.beta_paper_sd:.3f}, "
                       f"beta {s.beta_ntkft_mean:.3f} +- {s.beta_ntkft_sd:.3f}")
    rk = res.stages.get("rankings")
    if isinstance(rk, RankingsResult):
        for c in rk.correlations:
            if c.measure == "auc" and c.estimator == "paper":
                p = f"p {c.p_one_sided:.3f}" if math.isfinite(c.p_one_sided) else f"no test with {len(c.tasks)} tasks"
                typer.echo(f"{c.model} {c.group}: Spearman rho(beta, efficiency) {c.rho:+.2f}, {p}")
    tv = res.stages.get("taskvec")
    if isinstance(tv, TaskVecStage) and tv.skipped:
        typer.echo(f"stage taskvec: {tv.skipped}", err=True)
    typer.echo(f"report: {res.report}\nsummary: {res.summary}")
    typer.echo("Open the report in a browser: it starts with what was measured and how to read each number "
               "(beta: eigenvalue decay of the eNTK, larger = fewer samples needed; every error beside the constant "
               "predictor's).")


def _command(**kw: Any) -> None:
    config, quick = kw.pop("config", None), kw.pop("quick", False)
    extras = {p.name: kw.pop(p.name) for p in FLAGS if p.name != "quick"}
    if quick:
        if config:
            raise typer.BadParameter("--quick is a config of its own; give --quick or --config, not both")
        config = str(quick_config_path())
        typer.echo("ntkft reproduce --quick: the paper's Section 7 in miniature on MiniLM-L6 and real task data: the "
                   "eNTK spectrum of each task (decay rate beta), short learning curves with kernel GD beside them, "
                   "whether faster decay means faster learning, the stopping rule and task vectors. About 2.5 CPU "
                   "minutes; the numbers show what each measurement means, they are too small to be evidence.")
    _reproduce(load_config(ReproConfig, config, kw), **extras)


_command.__signature__ = inspect.Signature(FLAGS + config_options(ReproConfig))  # type: ignore[attr-defined]
_command.__doc__ = ("Reproduce the paper's Section 7: eNTK spectra, learning curves with kernel GD beside them, "
                    "rankings, stopping, task vectors; writes report.html and summary.md under --out.")
app.command("reproduce")(_command)


@app.command()
def report(run_dir: str = typer.Argument(..., help="a folder written by `ntkft reproduce`")) -> None:
    """Rebuild report.html, summary.md and figures/ of a reproduction run folder from its JSON files."""
    from ..reproduce import rebuild

    page, md = rebuild(run_dir)
    typer.echo(f"report: {page}\nsummary: {md}")
