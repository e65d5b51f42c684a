"""`ntkft finetune` and `ntkft curve`: options generated from FinetuneConfig."""

from __future__ import annotations

import typer

from ..finetune.config import FinetuneConfig
from ._common import DataDir, config_command, option

RUN_FLAGS = [option("out", "runs/finetune", "output run folder"),
             option("overwrite", False, "replace another run in --out (its files are removed only once this run "
                                        "is complete)", bool),
             option("data_dir", None, "task data directory (default: $NTKFT_DATA_DIR, then ./data)", str | None)]


@config_command(FinetuneConfig, "finetune", extra=RUN_FLAGS)
def finetune(cfg: FinetuneConfig, out: str, overwrite: bool, data_dir: str | None) -> None:
    """Fine-tune with hold-out early stopping; writes metrics.jsonl, result.json, model/ and meta.json."""
    from ..finetune import finetune as run_ft

    res = run_ft(cfg, out, data_dir=data_dir, overwrite=overwrite)
    typer.echo(f"stopped at step {res.stopped_step}: {res.stop_reason}; best step {res.best_step} "
               f"(val {res.monitor} {res.best_val:.4f}); lr {res.config['lr']:g}")
    typer.echo("test (best on val): " + ", ".join(f"{k} {v:.4f}" for k, v in res.test_best.items()))
    typer.echo("test (last step):   " + ", ".join(f"{k} {v:.4f}" for k, v in res.test_last.items()))
    for w in res.warnings:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(f"{res.samples_per_second:.1f} samples/s; wrote {out}/result.json, metrics.jsonl, model/, meta.json")


def _sizes(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--sizes must be comma-separated integers, got '{text}'") from None


CURVE_FLAGS = [option("tasks", "stsb,sts12,semrel", "comma-separated tasks"),
               option("sizes", "32,64,128,256,512", "comma-separated training sizes"),
               option("seeds", 3, "seeds per size", int)]


@config_command(FinetuneConfig, "curve", skip={"task", "n_train", "seed", "save_model"},
                extra=CURVE_FLAGS + [option("out", "runs/curves", "output run folder")] + RUN_FLAGS[1:])
def curve(cfg: FinetuneConfig, tasks: str, sizes: str, seeds: int, out: str, overwrite: bool,
          data_dir: str | None) -> None:
    """Learning curves over training sizes and seeds: curve.csv, curve_*.png, meta.json; resumes a half-done sweep."""
    from ..finetune import learning_curve

    rows = learning_curve(cfg, [t.strip() for t in tasks.split(",") if t.strip()], _sizes(sizes), seeds, out,
                          data_dir=data_dir, overwrite=overwrite)
    typer.echo(f"{len(rows)} rows in {out}/curve.csv; figures {out}/curve_*.png")


__all__ = ["DataDir", "curve", "finetune"]
