"""`ntkft taskvec cosine | add | negate | disentangle | orthogonality`: options generated from the taskvec configs."""

from __future__ import annotations

import math

import typer

from ..taskvec.config import AddConfig, CosineConfig, DisentangleConfig, NegateConfig, OrthogonalityConfig
from ._common import app, config_command, option

sub = typer.Typer(no_args_is_help=True, help="Task vectors: cosine, addition, negation, disentanglement, kernel "
                                             "orthogonality (Section 5.2 of the paper).")
app.add_typer(sub, name="taskvec")


def _flags(default_out: str, data: bool = True) -> list:
    flags = [option("out", default_out, "output run folder"),
             option("overwrite", False, "replace another run in --out (its files are removed only once this run "
                                        "is complete)", bool)]
    if data:
        flags.append(option("data_dir", None, "task data directory (default: $NTKFT_DATA_DIR, then ./data)", str | None))
    return flags


def _f(x: float | None) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


@config_command(CosineConfig, "cosine", target=sub, extra=_flags("runs/taskvec-cosine", data=False))
def cosine(cfg: CosineConfig, out: str, overwrite: bool) -> None:
    """Cosine similarity matrix of task vectors (Figure 3 left): cosine.json, cosine.csv, cosine.png."""
    from ..taskvec import run_cosine

    res = run_cosine(cfg, out, overwrite)
    w = max(9, max(len(n) for n in res.names) + 2)
    typer.echo(" " * w + "".join(f"{n:>{w}}" for n in res.names))
    for n, row in zip(res.names, res.matrix):
        typer.echo(f"{n:<{w}}" + "".join(f"{_f(v):>{w}}" for v in row))
    typer.echo("norms: " + ", ".join(f"{n} {v:.4g}" for n, v in zip(res.names, res.norms)) + f"; wrote {out}")


@config_command(AddConfig, "add", target=sub, extra=_flags("runs/taskvec-add"))
def add(cfg: AddConfig, out: str, overwrite: bool, data_dir: str | None) -> None:
    """Task addition theta_PT + lambda sum tau_i, lambda chosen on validation; normalised metric per task on test."""
    from ..taskvec import run_add

    res = run_add(cfg, out, overwrite, data_dir)
    typer.echo(f"lambda = {res.best_lambda:g} (chosen on validation from {len(res.lambdas)} values)")
    for t, v in res.test.items():
        lin = res.linearised.get(t, {})
        extra = f"; linearised rel. error {_f(lin.get('rel_error'))}" if lin else ""
        typer.echo(f"  {t} ({res.metrics[t]}): pretrained {_f(v['pretrained'])}, merged {_f(v['merged'])}, "
                   f"fine-tuned {_f(v['finetuned'])}, normalised {_f(v['normalised'])}{extra}")
    typer.echo(f"mean normalised: {_f(res.mean_normalised)}; wrote {out}" + (" (merged/ = HF model + heads)"
                                                                            if res.merged_dir else ""))


@config_command(NegateConfig, "negate", target=sub, extra=_flags("runs/taskvec-negate"))
def negate(cfg: NegateConfig, out: str, overwrite: bool, data_dir: str | None) -> None:
    """Task negation theta_PT - lambda tau: lowers the target while the control keeps its pretrained metric."""
    from ..taskvec import run_negate

    res = run_negate(cfg, out, overwrite, data_dir)
    tm, cm = res.metrics["target"], res.metrics["control"]
    t, c, g = res.test["target"], res.test["control"], res.negation_gap
    typer.echo(f"lambda = {res.best_lambda:g} (control keeps >= {res.threshold:g} of its pretrained {cm} on validation)")
    typer.echo(f"  target {res.target} ({tm}): fine-tuned {_f(t['finetuned'])}, pretrained {_f(t['pretrained'])}, "
               f"negated {_f(t['negated'])}")
    typer.echo(f"  control {res.control} ({cm}): pretrained {_f(c['pretrained'])}, negated {_f(c['negated'])} "
               f"(kept {_f(res.control_kept)})")
    typer.echo(f"negation gap (Corollary 1): {g['error']} {_f(g['negated'])} - {_f(g['finetuned'])} = {_f(g['gap'])}; "
               f"loss gap {_f(g['loss_gap'])}; wrote {out}")


@config_command(DisentangleConfig, "disentangle", target=sub, extra=_flags("runs/taskvec-disentangle"))
def disentangle(cfg: DisentangleConfig, out: str, overwrite: bool, data_dir: str | None) -> None:
    """Weight-disentanglement error xi(a1, a2) on a coefficient grid: disentangle.csv and heatmap."""
    from ..taskvec import run_disentangle

    res = run_disentangle(cfg, out, overwrite, data_dir)
    labels = [f"{a:g}" for a in res.coefficients]
    typer.echo(f"xi(a1 = {res.tasks[0]}, a2 = {res.tasks[1]})")
    typer.echo("a1\\a2 " + "".join(f"{a:>8}" for a in labels))
    for a, row in zip(labels, res.xi):
        typer.echo(f"{a:>5} " + "".join(f"{v:8.3f}" for v in row))
    typer.echo(f"wrote {out}")


@config_command(OrthogonalityConfig, "orthogonality", target=sub, extra=_flags("runs/taskvec-orthogonality"))
def orthogonality(cfg: OrthogonalityConfig, out: str, overwrite: bool, data_dir: str | None) -> None:
    """Kernel orthogonality (Assumption 5.1) per task pair, beside cosine and the pair's normalised accuracy."""
    from ..taskvec import run_orthogonality

    res = run_orthogonality(cfg, out, overwrite, data_dir)
    cols = ["kernel_ratio", "kernel_ratio_centred", "cosine", "normalised_accuracy", "lambda"]
    cols = [c for c in cols if any(c in r for r in res.rows)]
    typer.echo(f"{'pair':<24}" + "".join(f"{c:>22}" for c in cols))
    for r in res.rows:
        typer.echo(f"{r['task_a'] + ' + ' + r['task_b']:<24}" + "".join(f"{_f(r.get(c)):>22}" for c in cols))
    for k, v in res.spearman.items():
        typer.echo(f"spearman {k}: {_f(v)}")
    typer.echo(f"wrote {out}")
