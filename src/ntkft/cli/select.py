"""`ntkft select`: rank candidate checkpoints for a task from their eNTKs (options generated from SelectConfig)."""

from __future__ import annotations

import typer

from ..select.config import SelectConfig
from ._common import config_command, option

FLAGS = [option("out", "runs/select", "output run folder"),
         option("overwrite", False, "replace another run in --out (its files are removed only once this run "
                                    "is complete)", bool),
         option("data_dir", None, "task data directory (default: $NTKFT_DATA_DIR, then ./data)", str | None)]


@config_command(SelectConfig, "select", extra=FLAGS)
def select(cfg: SelectConfig, out: str, overwrite: bool, data_dir: str | None) -> None:
    """Rank candidate models for a task by the eNTK's predicted error at n; writes select.json/.csv, curves.png,
    index.html and meta.json; resumes per candidate."""
    from ..select import select as run_select
    from ..select.report import table

    cfg.candidates()  # an unknown model: one line and exit 2 before any work or folder
    res = run_select(cfg, out, data_dir=data_dir, overwrite=overwrite)
    typer.echo(table(res))
    typer.echo(f"wrote {out}/select.json, select.csv, curves.png, index.html, meta.json")


__all__ = ["select"]
