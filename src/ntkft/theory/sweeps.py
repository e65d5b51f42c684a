"""Sweeps of the theory lab: run folders resumable per unit, summaries with fitted slopes, figures.

A unit ((width, seed), (size, draw), ...) is written as units/<name>.json (+ .safetensors) once finished; a rerun
with the same settings skips finished units. The resume key leaves out the lists that only choose units (widths,
seeds, sizes), so a sweep can be extended with more widths or seeds and only the new units run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .._runs import RunFolder
from .config import UNIT_FREE, LabConfig, WidthSweepConfig
from .fits import loglog_slope
from .lab import LabData, build_data, width_unit
from .plots import lines, scaling_panels
from .tasks import fingerprint

LAB_VERSION = 1  # bump when a unit's computation changes, so old units are not resumed


def run_key(cfg: LabConfig, data: LabData, kind: str) -> dict:
    """Every config field that decides a unit's result + the data fingerprint + the lab version."""
    fields = {k: v for k, v in cfg.model_dump().items() if k not in UNIT_FREE}
    t = data.target
    return {"kind": kind, "lab_version": LAB_VERSION, "config": fields,
            "data": fingerprint(data.source, t.train, t.val, t.test)}


def run_units(rf: RunFolder, units: list[tuple[str, Callable[[], tuple[dict, dict]]]], progress: bool = True,
              desc: str = "units") -> dict[str, tuple[dict, dict]]:
    """Run (or load) every named unit; each finished unit is on disk before the next starts."""
    out: dict[str, tuple[dict, dict]] = {}
    bar = tqdm(units, desc=desc, disable=not progress, unit="unit")
    for name, fn in bar:
        bar.set_postfix_str(name)
        js, st = rf.root / "units" / f"{name}.json", rf.root / "units" / f"{name}.safetensors"
        if js.is_file():
            from safetensors.torch import load_file

            out[name] = (json.loads(js.read_text()), load_file(st) if st.is_file() else {})
            continue
        t0 = time.time()
        info, tensors = fn()
        info["seconds"] = round(time.time() - t0, 2)
        if tensors:
            rf.save_tensors(f"units/{name}.safetensors", tensors)
        rf.write_json(f"units/{name}.json", info)  # written last: its presence marks the unit finished
        out[name] = (info, tensors)
    return out


def _get(d: dict, path: str):
    for k in path.split("."):
        d = d[k]
    return d


def spread(kernels: list[torch.Tensor]) -> float:
    """Relative spread over seeds: sqrt(mean_s ||K_s - Kbar||_F^2 * S/(S-1)) / ||Kbar||_F."""
    ks = torch.stack([k.double() for k in kernels])
    mean = ks.mean(0)
    var = ((ks - mean) ** 2).sum((1, 2)).mean() * len(kernels) / (len(kernels) - 1)
    return float(var.sqrt() / torch.linalg.norm(mean))


# quantity -> (label, predicted log-log slope in n)
WIDTH_LAWS = {
    "theta_dist": ("||theta_PT - theta_0||_2 (B.3 step 1)", -0.5),
    "kernel_init_to_pt_rel": ("||K_0 - K_PT||_F / ||K_PT||_F (eq 40)", -0.5),
    "drift_sup_rel": ("sup_t ||K_PT - K_t||_F / ||K_PT||_F (eq 17/99)", -0.5),
    "lin_sup": ("sup_t RMS(f_t - f_lin,t) on test (Lemma 1)", -0.5),
    "taylor_rms": ("RMS Taylor remainder at T_max (Lemma 1)", -0.5),
    "err_t_hat.diff_rms": ("RMS(f - f_lin) at T_hat", -0.5),
    "err_holdout.diff_rms": ("RMS(f - f_lin) at hold-out stop", -0.5),
    "err_oracle.diff_rms": ("RMS(f - f_lin) at oracle stop", -0.5),
    "err_t_hat.gap": ("|MSE_net - MSE_lin| at T_hat", -0.5),
    "err_t_hat.net": ("test MSE at T_hat (-> kernel limit)", 0.0),
    "err_holdout.net": ("test MSE at hold-out stop", 0.0),
    "err_oracle.net": ("test MSE at oracle stop", 0.0),
}


def summarise_width(cfg: WidthSweepConfig, results: dict[str, tuple[dict, dict]]) -> dict:
    """Per-width means and sds, the eNTK spread over seeds, and log-log slopes (all widths and n >= fit_min_width)."""
    infos = [r[0] for r in results.values()]
    widths = sorted({i["width"] for i in infos})
    per_width: dict[int, dict] = {}
    for w in widths:
        rows = [i for i in infos if i["width"] == w]
        stats = {}
        for q in list(WIDTH_LAWS) + ["lambda_1", "drift_sup_abs", "err_t_hat.lin", "err_holdout.lin", "err_oracle.lin",
                                     "pt_test_mse", "times.t_hat", "times.holdout", "times.oracle", "times.t_hat_est"]:
            v = np.array([_get(i, q) for i in rows], dtype=float)
            stats[q] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
        ks = [r[1]["K0"] for r in results.values() if r[0]["width"] == w and "K0" in r[1]]
        kp = [r[1]["K_PT"] for r in results.values() if r[0]["width"] == w and "K_PT" in r[1]]
        stats["k0_spread"] = spread(ks) if len(ks) > 1 else None
        stats["kpt_spread"] = spread(kp) if len(kp) > 1 else None
        stats["seeds"] = len(rows)
        stats["step_ok"] = all(i["step_ok"] for i in rows)
        per_width[w] = stats
    fits = {}
    for q, (label, pred) in WIDTH_LAWS.items():
        x = [i["width"] for i in infos]
        y = [_get(i, q) for i in infos]
        fits[q] = {"label": label, "all": _fd(loglog_slope(x, y, predicted=pred)),
                   "large": _fd(loglog_slope(x, y, predicted=pred, x_min=cfg.fit_min_width))}
    for q, label in (("k0_spread", "relative spread of K_0 over seeds (infinite-width limit)"),
                     ("kpt_spread", "relative spread of K_PT over seeds")):
        xs = [w for w in widths if per_width[w][q] is not None]
        ys = [per_width[w][q] for w in xs]
        fits[q] = {"label": label, "all": _fd(loglog_slope(xs, ys, predicted=-0.5)),
                   "large": _fd(loglog_slope(xs, ys, predicted=-0.5, x_min=cfg.fit_min_width))}
    return {"widths": widths, "per_width": {str(w): s for w, s in per_width.items()}, "fits": fits}


def _fd(fit) -> dict | None:
    return fit.to_dict() if fit is not None else None


def width_figures(rf: RunFolder, summary: dict, results: dict[str, tuple[dict, dict]]) -> list[str]:
    """scaling.png (log-log panels with fitted and predicted slopes) and errors.png (test error vs width)."""
    infos = [r[0] for r in results.values()]
    panels = []
    for q in ["theta_dist", "kernel_init_to_pt_rel", "drift_sup_rel", "lin_sup", "taylor_rms", "err_t_hat.diff_rms",
              "err_oracle.diff_rms", "err_t_hat.gap"]:
        f = summary["fits"][q]
        panels.append({"title": f["label"], "x": [i["width"] for i in infos], "y": [_get(i, q) for i in infos],
                       "fit": f["all"], "predicted": -0.5})
    ws = summary["widths"]
    sp = [(w, summary["per_width"][str(w)]["k0_spread"]) for w in ws if summary["per_width"][str(w)]["k0_spread"]]
    if sp:
        panels.append({"title": summary["fits"]["k0_spread"]["label"], "x": [a for a, _ in sp], "y": [b for _, b in sp],
                       "fit": summary["fits"]["k0_spread"]["all"], "predicted": -0.5})
    scaling_panels(panels, rf.path("scaling.png"), title="Reference transformer: width scaling (dotted: slope -1/2)")
    pw = summary["per_width"]
    series = {}
    for rule, name in (("t_hat", "T_hat (RWY)"), ("holdout", "hold-out"), ("oracle", "oracle")):
        for kind in ("net", "lin"):
            q = f"err_{rule}.{kind}"
            series[f"{name}, {'network' if kind == 'net' else 'linearised'}"] = (
                [pw[str(w)][q]["mean"] for w in ws], [pw[str(w)][q]["sd"] for w in ws])
    lines(ws, series, rf.path("errors.png"), "width n", "test MSE vs f_tgt",
          "Early-stopped test error: network vs its linearisation")
    return ["scaling.png", "errors.png"]


def width_sweep(cfg: WidthSweepConfig, out: str | Path, overwrite: bool = False, progress: bool = True) -> dict:
    """Pretrain + fine-tune per (width, seed), then summary.json, units.csv and figures in `out`."""
    data = build_data(cfg)
    rf = RunFolder(out, "theory-width-sweep", run_key(cfg, data, "width"), overwrite)
    rf.open()
    rf.write_json("config.json", cfg.model_dump())
    units = [(f"w{w:05d}_s{s:03d}", (lambda w=w, s=s: width_unit(cfg, data, w, s)))
             for w in cfg.widths for s in range(cfg.seeds)]
    results = run_units(rf, units, progress, "width sweep")
    summary = summarise_width(cfg, results)
    summary["task"] = {"task_corr": data.task_corr, "target_var": float(data.target.test.f.var())}
    rf.write_json("summary.json", summary)
    rf.write_text("units.csv", _csv([r[0] for r in results.values()], ["width", "seed", "seconds"] + list(WIDTH_LAWS)
                                    + ["lambda_1", "times.t_hat", "times.holdout", "times.oracle"]))
    width_figures(rf, summary, results)
    rf.finish(command="theory width-sweep")
    return summary


def _csv(rows: list[dict], cols: list[str]) -> str:
    lines_ = [",".join(cols)]
    for r in rows:
        lines_.append(",".join(f"{_get(r, c):.6g}" if isinstance(_get(r, c), float) else str(_get(r, c)) for c in cols))
    return "\n".join(lines_) + "\n"
