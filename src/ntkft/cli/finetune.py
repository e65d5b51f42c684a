"""`ntkft finetune` and `ntkft curve`."""

from __future__ import annotations

from typing import Optional

import typer

from ._common import DataDir, app


def _ft_config(config: Optional[str], overrides: dict):
    from ..finetune import FinetuneConfig

    given = {k: v for k, v in overrides.items() if v is not None}
    return FinetuneConfig.from_file(config, **given) if config else FinetuneConfig.make(**given)

@app.command()
def finetune(config: Optional[str] = typer.Option(None, help="YAML file with FinetuneConfig fields"),
             model: Optional[str] = None, task: Optional[str] = None,
             setting: Optional[str] = typer.Option(None, help="full | head | probe | linearized"),
             layers: Optional[int] = None, n_train: Optional[int] = None, n_test: Optional[int] = None,
             val: Optional[float] = None, max_length: Optional[int] = None, seed: Optional[int] = None,
             optimizer: Optional[str] = typer.Option(None, help="gd (full batch) | adamw"),
             lr: Optional[float] = None, weight_decay: Optional[float] = None, batch_size: Optional[int] = None,
             grad_accum: Optional[int] = None, max_steps: Optional[int] = None, warmup_steps: Optional[int] = None,
             schedule: Optional[str] = None, eval_every: Optional[int] = None, patience: Optional[int] = None,
             min_delta: Optional[float] = None, monitor: Optional[str] = None, mode: Optional[str] = None,
             drift_every: Optional[int] = None, drift_n: Optional[int] = None, save_every: Optional[int] = None,
             tensorboard: Optional[bool] = None, bf16: Optional[bool] = None,
             out: str = typer.Option("runs/finetune"), data_dir: Optional[str] = DataDir) -> None:
    """Fine-tune with hold-out early stopping; writes metrics.jsonl, result.json and model/ (HF, safetensors)."""
    from ..finetune import finetune as run_ft

    kw = {k: v for k, v in locals().items() if k not in {"config", "out", "data_dir", "run_ft"}}
    if kw.get("val") is not None and float(kw["val"]).is_integer() and kw["val"] >= 1:
        kw["val"] = int(kw["val"])
    cfg = _ft_config(config, kw)
    res = run_ft(cfg, out, data_dir=data_dir)
    typer.echo(f"stopped at step {res.stopped_step}: {res.stop_reason}; best step {res.best_step} "
               f"(val {res.monitor} {res.best_val:.4f})")
    typer.echo("test (best on val): " + ", ".join(f"{k} {v:.4f}" for k, v in res.test_best.items()))
    typer.echo("test (last step):   " + ", ".join(f"{k} {v:.4f}" for k, v in res.test_last.items()))
    typer.echo(f"{res.samples_per_second:.1f} samples/s; wrote {out}/result.json, metrics.jsonl, model/")

@app.command()
def curve(config: Optional[str] = typer.Option(None, help="YAML file with FinetuneConfig fields"),
          model: Optional[str] = None, tasks: str = typer.Option("stsb,sts12,semrel"),
          sizes: str = typer.Option("32,64,128,256,512"), seeds: int = 3,
          setting: Optional[str] = None, layers: Optional[int] = None, optimizer: Optional[str] = None,
          lr: Optional[float] = None, batch_size: Optional[int] = None, max_steps: Optional[int] = None,
          eval_every: Optional[int] = None, patience: Optional[int] = None, n_test: Optional[int] = None,
          max_length: Optional[int] = None, out: str = typer.Option("runs/curves"),
          data_dir: Optional[str] = DataDir) -> None:
    """Learning curves over training sizes and seeds: curve.csv and curve_*.png; resumes a half-done sweep."""
    from ..finetune import learning_curve

    kw = {k: v for k, v in locals().items()
          if k not in {"config", "out", "data_dir", "tasks", "sizes", "seeds", "learning_curve"}}
    cfg = _ft_config(config, kw)
    try:
        size_list = [int(x) for x in sizes.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--sizes must be comma-separated integers, got '{sizes}'") from None
    rows = learning_curve(cfg, [t.strip() for t in tasks.split(",") if t.strip()], size_list, seeds, out,
                          data_dir=data_dir)
    typer.echo(f"{len(rows)} rows in {out}/curve.csv; figures {out}/curve_*.png")

