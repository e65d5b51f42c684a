"""`ntkft theory width-sweep | sample-sweep | arithmetic`: the paper's reference transformer, measured."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ..theory.config import ArithmeticConfig, SampleSweepConfig, WidthSweepConfig
from ._common import app, config_command, option

if TYPE_CHECKING:
    from ..theory.fits import SlopeFit

sub = typer.Typer(no_args_is_help=True, help="The paper's reference transformer: width and sample-size scaling laws, "
                  "task arithmetic (synthetic teacher tasks, seeded).")
app.add_typer(sub, name="theory")

_EXTRA = [option("overwrite", False, "replace another run in --out", bool),
          option("threads", 1, "torch CPU threads", int)]


def _threads(n: int) -> None:
    import torch

    if n < 1:
        raise typer.BadParameter("--threads must be >= 1")
    torch.set_num_threads(n)


def _slope(f: SlopeFit | None) -> str:
    if not f:
        return "n/a (fewer than 3 points)"
    pred = "none" if f.predicted is None else f"{f.predicted:+.2f}"
    return f"{f.slope:+.3f} [{f.low:+.3f}, {f.high:+.3f}] (predicted {pred}: {f.verdict})"


@config_command(WidthSweepConfig, "width-sweep", target=sub,
                extra=[option("out", "runs/theory/width-sweep", "output run folder")] + _EXTRA)
def width_sweep(cfg: WidthSweepConfig, out: str, overwrite: bool, threads: int) -> None:
    """Pretrain + fine-tune per (width, seed): parameter distance, kernel drift, linearisation error and early-stopped
    test errors against width, with log-log slopes vs the predicted -1/2."""
    from ..theory.sweeps import width_sweep as run

    _threads(threads)
    s = run(cfg, out, overwrite)
    for f in s.fits.values():
        typer.echo(f"{f.label:58s} slope {_slope(f.all)}")
    typer.echo(f"results in {out}/summary.json, figures scaling.png and errors.png")


@config_command(SampleSweepConfig, "sample-sweep", target=sub,
                extra=[option("out", "runs/theory/sample-sweep", "output run folder")] + _EXTRA)
def sample_sweep(cfg: SampleSweepConfig, out: str, overwrite: bool, threads: int) -> None:
    """At one width: early-stopped test error against N_2, with the rate predicted from the measured beta (eq 30)."""
    from ..theory.sweeps import sample_sweep as run

    _threads(threads)
    s = run(cfg, out, overwrite)
    typer.echo(f"beta (window fit, N={s.beta.n}) = {s.beta.window_mean:.3f}; predicted error slope "
               f"{s.predicted_slope if s.predicted_slope is None else round(s.predicted_slope, 3)}")
    for q, f in s.fits.items():
        typer.echo(f"error at {q:14s} slope {_slope(f)}")
    typer.echo(f"results in {out}/summary.json, figures learning_curves.png and spectrum.png")


@config_command(ArithmeticConfig, "arithmetic", target=sub,
                extra=[option("out", "runs/theory/arithmetic", "output run folder")] + _EXTRA)
def arithmetic(cfg: ArithmeticConfig, out: str, overwrite: bool, threads: int) -> None:
    """Task addition and negation for orthogonal-by-construction vs overlapping target tasks, as width grows."""
    from ..theory.sweeps import arithmetic_sweep as run

    _threads(threads)
    s = run(cfg, out, overwrite)
    for w in s.widths:
        pw = s.per_width[str(w)]
        typer.echo(f"n={w:5d}: " + "; ".join(
            f"{d} cross-kernel {pw[d].q('cross_kernel_ratio').mean:.3f}, leakage {pw[d].q('leakage').mean:.3f}, "
            f"MT/FT MSE {pw[d].q('normalised_mse_mean').mean:.3f}, negation worse {pw[d].negation_positive}"
            for d in ("orthogonal", "overlapping")))
    for f in s.fits.values():
        typer.echo(f"{f.label:58s} slope {_slope(f.fit)}")
    typer.echo(f"results in {out}/summary.json, figures arithmetic_scaling.png and arithmetic_addition.png")
