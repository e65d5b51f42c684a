"""`select`'s outputs: the terminal table, select.json / select.csv (rank order), a PNG of the curves, an HTML page."""

from __future__ import annotations

import csv
import html
import io
import json
import math

from .._runs import RunFolder
from .result import CandidateResult, SelectResult

COLUMNS = ["rank", "candidate", "setting", "params", "error_at_n", "low", "high", "constant", "n_for_target", "beta",
           "beta_low", "beta_high", "rate", "kta", "logme", "hscore", "seconds", "status"]


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _n_target(c: CandidateResult) -> str:
    if c.n_for_target is None:
        return "unreachable" if c.n_for_target_extrapolated else "-"
    return f"{c.n_for_target:.0f}" + ("*" if c.n_for_target_extrapolated else "")


def rows(res: SelectResult) -> list[list[str]]:
    """One row per candidate in rank order (strings as printed; '*' marks values extrapolated beyond the pool)."""
    out = []
    for i, c in enumerate(res.candidates):
        star = "*" if c.error_at_n_extrapolated else ""
        out.append([str(i + 1) if c.status == "ok" else "-", c.name, c.setting, f"{c.params / 1e6:.1f}M",
                    _f(c.error_at_n) + star, _f(c.error_at_n_low), _f(c.error_at_n_high), _f(c.baseline_at_n),
                    _n_target(c), _f(c.beta), _f(c.beta_low), _f(c.beta_high), _f(c.rate), _f(c.kta), _f(c.logme),
                    _f(c.hscore), f"{c.seconds:.0f}", c.status if c.error is None else f"failed: {c.error}"])
    return out


def table(res: SelectResult) -> str:
    """The ranked table for the terminal."""
    head = [c.replace("error_at_n", f"{res.metric}@{res.n}") for c in COLUMNS]
    body = rows(res)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    line = lambda r: "  ".join(v.rjust(w) if j not in (1, 2, 17) else v.ljust(w)  # noqa: E731
                               for j, (v, w) in enumerate(zip(r, widths)))
    notes = [f"task {res.task} ({res.task_type}), eNTK on a pool of {res.pool} training rows; "
             f"{res.metric}@{res.n} = predicted test {res.metric} after fine-tuning on {res.n} rows "
             "(hold-out early-stopped kernel GD from "
             + ("the model's own step-0 function" if res.start == "model" else "the training mean")
             + "; low/high: 5-95% over subsets); constant = the constant predictor"]
    if any(c.error_at_n_extrapolated or c.n_for_target_extrapolated for c in res.candidates):
        notes.append("* extrapolated beyond the pool with c + a n^-r")
    return "\n".join([line(head), *map(line, body), *notes])


def csv_text(res: SelectResult) -> str:
    """select.csv: one row per candidate in rank order, numbers unrounded."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for i, c in enumerate(res.candidates):
        w.writerow([i + 1 if c.status == "ok" else "", c.name, c.setting, c.params, c.error_at_n, c.error_at_n_low,
                    c.error_at_n_high, c.baseline_at_n, "" if c.n_for_target is None else c.n_for_target, c.beta,
                    c.beta_low, c.beta_high, c.rate, c.kta, c.logme, "" if c.hscore is None else c.hscore, c.seconds,
                    c.status])
    return buf.getvalue()


def curves_png(res: SelectResult) -> bytes:
    """Predicted curves (mean and 5-95% band) per candidate, the constant predictor dashed, n and the target marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    base = None
    for c in res.candidates:
        if c.curve is None:
            continue
        line, = ax.plot(c.curve.sizes, c.curve.mean, marker="o", ms=3, label=c.name)
        ax.fill_between(c.curve.sizes, c.curve.low, c.curve.high, color=line.get_color(), alpha=0.15)
        base = base or c.curve
    if base is not None:
        ax.plot(base.sizes, base.baseline, "k--", lw=1, label="constant predictor")
    ax.axvline(res.n, color="grey", lw=0.8, ls=":")
    if res.target_error is not None:
        ax.axhline(res.target_error, color="red", lw=0.8, ls=":", label="target")
    ax.set_xscale("log")
    ax.set_xlabel("training rows n")
    ax.set_ylabel(f"predicted test {res.metric}")
    ax.set_title(f"{res.task}: predicted learning curves from the eNTK (pool {res.pool})")
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def page(res: SelectResult) -> str:
    """A self-contained HTML page: the table and the figure."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in rows(res))
    return (f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width, initial-scale=1'><title>ntkft select: {html.escape(res.task)}</title>"
            "<style>body{font-family:sans-serif;max-width:70em;margin:1em auto;padding:0 1em}table{border-collapse:"
            "collapse;font-size:.85em;display:block;overflow-x:auto}td,th{border:1px solid #ccc;padding:.2em .4em}"
            "img{max-width:100%}</style></head><body>"
            f"<h1>Model selection for {html.escape(res.task)}</h1><p>Candidates ranked by the predicted test "
            f"{res.metric} after fine-tuning on n = {res.n} rows (hold-out early-stopped kernel gradient descent on each "
            f"model's eNTK over a pool of {res.pool} training rows; interval 5-95% over random subsets). "
            "'constant' is the constant predictor on the same rows; '*' marks values extrapolated beyond the pool "
            "with c + a n<sup>-r</sup>.</p>"
            f"<table><tr>{head}</tr>{body}</table><p><img src='curves.png' alt='predicted learning curves'></p>"
            "</body></html>")


def write_report(res: SelectResult, rf: RunFolder) -> None:
    """select.json, select.csv, curves.png and index.html in the run folder."""
    from .._io import atomic_write_bytes

    rf.write_json("select.json", json.loads(res.model_dump_json()))
    rf.write_text("select.csv", csv_text(res))
    atomic_write_bytes(rf.path("curves.png"), curves_png(res))
    rf.write_text("index.html", page(res))
