"""`ntkft finetune` and `ntkft curve`: options generated from FinetuneConfig."""

from __future__ import annotations

import typer

from ..finetune.config import FinetuneConfig
from ..finetune.result import FinetuneResult
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
    typer.echo(summary_table(res))
    for w in res.warnings:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(f"{res.samples_per_second:.1f} samples/s; wrote {out}/result.json, metrics.jsonl, model/, meta.json")


def summary_table(res: FinetuneResult) -> str:
    """The test scores of the kept and the last model beside the constant predictor's on the same rows."""
    const = f"constant ({res.baseline})" if res.baseline else "constant"
    head = f"{'test':<14}{'kept (best val)':>16}{'last step':>12}  {const}"
    lines = [head]
    for k, v in res.test_best.items():
        name = f"f1 ({res.f1_average})" if k == "f1" and res.f1_average else k
        lines.append(f"{name:<14}{v:>16.4f}{res.test_last.get(k, float('nan')):>12.4f}  "
                     f"{res.baseline_test.get(k, float('nan')):.4f}")
    if res.beats_baseline is not None:
        lines.append(f"the kept model {'beats' if res.beats_baseline else 'does NOT beat'} the constant predictor "
                     f"on test {res.headline}")
    return "\n".join(lines)


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
