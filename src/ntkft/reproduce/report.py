"""The report of a reproduction run: a static HTML page (figures embedded) and a Markdown summary, both
built only from the JSON files in the run folder; every table names the file and the entries it shows."""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .._runs import RunFolder
from ..errors import ConfigError
from . import plots
from .context import slug
from .paper import FAMILIES, PAPER_BETA, PAPER_TASKVEC_NOTE, label

STAGE_FILES = {"spectra": "spectra/spectra.json", "curves": "curves/curves.json", "rankings": "rankings/rankings.json",
               "stopping": "stopping/stopping.json", "taskvec": "taskvec/taskvec.json"}


def fmt(v: Any, digits: int = 3) -> str:
    """One cell: floats to `digits` decimals, None and NaN as '-', inf as 'inf', lists joined by ' > '."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}f}"
    if isinstance(v, list):
        return " > ".join(label(x) if isinstance(x, str) else fmt(x) for x in v)
    return str(v)


@dataclass
class Table:
    """A titled table with the JSON file and entries its numbers come from."""

    id: str
    title: str
    source: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    note: str = ""

    def cells(self) -> list[list[str]]:
        return [[fmt(v) for v in r] for r in self.rows]

    def markdown(self) -> str:
        head = f"**{self.title}** <a id=\"{self.id}\"></a>\n\n"
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in self.cells()]
        src = f"\n\n_Source: `{self.source}`._" + (f" {self.note}" if self.note else "")
        return head + "\n".join(lines) + src + "\n"

    def html(self) -> str:
        h = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.cells())
        note = f" {html.escape(self.note)}" if self.note else ""
        return (f'<h4>{html.escape(self.title)}</h4><table id="{html.escape(self.id)}" '
                f'data-source="{html.escape(self.source)}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'
                f'<p class="src">Source: <code>{html.escape(self.source)}</code>.{note}</p>')


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name under figures/, caption)


def _read(root: Path, rel: str) -> Any:
    p = root / rel
    return json.loads(p.read_text()) if p.is_file() else None


# ---------------------------------------------------------------- sections


def _spectra_section(root: Path, d: dict | None, cfg: dict, figs: dict[str, bytes]) -> Section:
    sec = Section("1. eNTK spectra and the decay rate beta (paper Section 7.1, Figures 4-9)")
    if d is None:
        sec.text.append("Stage 1 has not run.")
        return sec
    sec.text.append(f"eNTK of f_PT (scalar readout, head seed 0) on {cfg.get('kernel_n')} random training samples per "
                    f"task, {cfg.get('draws')} draws. beta by the paper's estimator (least squares of "
                    "log(lambda_k/lambda_1) on log k, k = 1..N, eq 31-32) and by ntkft's default (the scale-matched "
                    "estimate of `ntkft spectrum`: the k-th eigenvalue of K against the matching one of its "
                    "half-subsets, corrected for finite N) with its 90% subsampling interval on the first draw. "
                    "Kernel parameters per model: " + ", ".join(f"{m}: {p}" for m, p in d["kernel_params"].items()) + ".")
    for model in dict.fromkeys(s["model"] for s in d["spectra"]):
        mine = [s for s in d["spectra"] if s["model"] == model]
        t = Table(f"beta-{slug(model)}", f"beta per task, {model} (paper: GPT-Neo-1.3B)",
                  f"spectra/spectra.json: spectra[model={model}]",
                  ["task", "paper beta", "paper sd", "beta (paper est.)", "sd", "beta (ntkft)", "sd (ntkft)",
                   "CI low", "CI high", "R2 (paper est.)", "decay"])
        off = [label(s["task"]) for s in mine if not (s["ci_low"] <= s["beta_ntkft"][0] <= s["ci_high"])]
        if off:
            t.note = f"No subsampling interval around the first draw's estimate for {', '.join(off)} (too few samples)."
        for s in mine:
            pb = PAPER_BETA.get(s["task"])
            t.rows.append([label(s["task"]), pb[0] if pb else None, pb[1] if pb else None, s["beta_paper_mean"],
                           s["beta_paper_sd"], s["beta_ntkft_mean"], s["beta_ntkft_sd"], s["ci_low"], s["ci_high"],
                           s["r2_paper"], s["decay_model"]])
        sec.tables.append(t)
        name = f"spectra_{slug(model)}.png"
        figs[name] = plots.spectra_figure(mine, f"eNTK eigenvalue decay, {model}")
        sec.figures.append((name, f"Eigenvalues of K/N per task and draw, {model}; dashed: the paper's fit, "
                                  "dotted: ntkft's scale-matched estimate over its window."))
        sec.text.append(f"Predicted order of sample efficiency for {model} (larger beta first): "
                        f"{fmt(d['predicted_order'][model])}.")
    return sec


def _curves_section(root: Path, d: dict | None, spectra: dict | None, cfg: dict, figs: dict[str, bytes]) -> Section:
    sec = Section("2. Learning curves (paper Figures 2 and 10) with the kernel-GD curve and the predicted rate")
    if d is None:
        sec.text.append("Stage 2 has not run.")
        return sec
    models = {m.get("label") or m["name"]: m for m in cfg.get("models", [])}
    sec.text.append(
        f"Training sizes {cfg.get('sizes')} (before a {cfg.get('val')} hold-out split), {cfg.get('seeds')} seed(s), "
        f"{cfg.get('n_test')} test examples; hold-out early stopping on the validation loss with the best weights "
        "restored. The learning rate is chosen per model and task from the grid on the validation loss at training "
        f"size {cfg.get('tune_size') or 'the middle size'}, seed 0 (table 'learning rate'). Scale-free score: "
        "R^2 = 1 - MSE/Var(y_test) for regression, (accuracy - majority)/(1 - majority) for classification; "
        "0 = a model that ignores its input. Kernel GD: closed-form gradient descent from f_PT on the eNTK of the "
        "same model (train and test kernels, step 1/lambda_1, t chosen on the hold-out rows), i.e. the linearised "
        "model's exact learning curve; classification is kernel regression on -1/+1 labels. Regression targets are "
        "standardised on each cell's training rows, for fine-tuning (FinetuneConfig.standardize) and kernel GD alike; "
        "metrics are in the targets' units. Step 0 is evaluated and may be kept by early stopping.")
    centred = [k for k, m in models.items() if m.get("center_output", False)]
    plain = [k for k in models if k not in centred]
    if centred:
        sec.text.append(
            f"Start ({', '.join(centred)}): fine-tuning trains f = g - g_0 + c, the model's output minus its output at "
            "step 0 (a constant of each input, so gradients and eNTK are unchanged) plus the constant predictor c "
            "(the training mean; the log class prior), and kernel GD starts at the training targets' mean: both begin "
            "exactly at the input-ignoring baseline, not at the new random head's per-row output.")
    if plain:
        sec.text.append(
            f"Start ({', '.join(plain)}): the new head's bias is set so that f's mean over the cell's training rows is "
            "the training mean (log class prior); kernel GD starts from f_PT with the head's bias at 0.")
    betas: dict[str, dict[str, float]] = {}
    for s in (spectra or {}).get("spectra", []):
        betas.setdefault(s["model"], {})[s["task"]] = s["beta_paper_mean"]
    for model in dict.fromkeys(c["model"] for c in d["curves"]):
        plan = models.get(model, {})
        setting = plan.get("setting", "?") + (f", backbone cut after block {plan['layers']}" if plan.get("layers")
                                              else "") + (f", head init sigma {plan['sigma']:g}"
                                                          if plan.get("sigma", 1.0) != 1.0 else "")
        mine = [c for c in d["curves"] if c["model"] == model]
        sizes = sorted({s for c in mine for s in c["sizes"]})
        lr = Table(f"lr-{slug(model)}", f"learning rate chosen on validation, {model} ({setting})",
                   f"curves/curves.json: lr_choice[{model}]", ["task", "grid (lr: best val loss)", "chosen lr"])
        for task, ch in d["lr_choice"].get(model, {}).items():
            grid = "; ".join(f"{g['lr']:g}: " + ("failed" if g.get("failed") else fmt(g.get("best_val")))
                             for g in ch["grid"])
            lr.rows.append([label(task), grid, f"{ch['lr']:g}"])
        sec.tables.append(lr)
        sk = Table(f"score-{slug(model)}", f"scale-free test score by training size, {model} (mean over seeds)",
                   f"curves/curves.json: curves[model={model}].metrics.skill, .slope, .kgd_slope",
                   ["task"] + [f"n={s}" for s in sizes] + ["slope", "slope low", "slope high", "predicted slope",
                                                           "kernel-GD slope", "cells below baseline"],
                   note="slope: OLS of log(error) on log(n) over every cell with a 90% t interval; error = "
                        "MSE/Var(y_test) (regression) or 1 - accuracy (classification); predicted slope = "
                        "-2beta/(2beta+1) with beta from stage 1 (eq 30).")
        for c in mine:
            vals = [c["metrics"]["skill"][c["sizes"].index(s)] if s in c["sizes"] else None for s in sizes]
            b = betas.get(model, {}).get(c["task"])
            pred = -2 * b / (2 * b + 1) if b and b > 0 else None
            sl, ks = c.get("slope") or {}, c.get("kgd_slope") or {}
            sk.rows.append([label(c["task"])] + vals + [sl.get("slope"), sl.get("low"), sl.get("high"), pred,
                                                        ks.get("slope"), c.get("worse_than_baseline")])
        sec.tables.append(sk)
        raw = Table(f"raw-{slug(model)}", f"raw test metrics by training size, {model} (mean over seeds)",
                    f"curves/curves.json: curves[model={model}].metrics",
                    ["task", "metric"] + [f"n={s}" for s in sizes])
        for c in mine:
            for m in (["mse", "pearson", "spearman"] if c["type"] == "regression" else ["accuracy", "f1"]):
                raw.rows.append([label(c["task"]), m] + [c["metrics"][m][c["sizes"].index(s)] if s in c["sizes"]
                                                         else None for s in sizes])
        sec.tables.append(raw)
        kg = [c for c in mine if c["kgd_sizes"]]
        if kg:
            ksz = sorted({s for c in kg for s in c["kgd_sizes"]})
            kt = Table(f"kgd-{slug(model)}", f"kernel GD on the eNTK, {model}: test metric at the hold-out step",
                       f"curves/curves.json: curves[model={model}].kgd", ["task", "metric"] + [f"n={s}" for s in ksz])
            for c in kg:
                for m in (["nmse", "pearson"] if c["type"] == "regression" else ["accuracy", "f1"]):
                    kt.rows.append([label(c["task"]), m] + [c["kgd"][m][c["kgd_sizes"].index(s)]
                                                            if s in c["kgd_sizes"] else None for s in ksz])
            sec.tables.append(kt)
        for kind in ("regression", "classification"):
            sub = [c for c in mine if c["type"] == kind]
            if not sub:
                continue
            name = f"curves_{slug(model)}_{kind}.png"
            figs[name] = plots.curves_figure(sub, betas.get(model, {}), kind, f"{model} ({setting}): {kind} tasks")
            sec.figures.append((name, f"{model}, {kind}: " + (
                "raw MSE (paper Figure 2 left) and MSE/Var(y_test) on log-log axes with kernel GD (dashed) and the "
                "rate N^(-2beta/(2beta+1)) fitted through the measured points (dotted)" if kind == "regression" else
                "accuracy (paper Figure 2 right) with kernel GD (dashed), and F1 (paper Figure 10)") + "."))
    return sec


def _rankings_section(d: dict | None, figs: dict[str, bytes]) -> Section:
    sec = Section("3. Rankings: does beta predict sample efficiency?")
    if d is None:
        sec.text.append("Stage 3 has not run.")
        return sec
    sec.text.append("Sample efficiency: " + d["definition"] + ". Spearman's rho between beta and each measure "
                    "(for n_frac, -n_frac), one-sided permutation p-value (H1: rho > 0), exact over all orderings. "
                    "With three tasks a family's rho is one of -1, -0.5, 0.5, 1 and the smallest possible p is 1/6.")
    for model in dict.fromkeys(e["model"] for e in d["efficiency"]):
        eff = [e for e in d["efficiency"] if e["model"] == model]
        t = Table(f"efficiency-{slug(model)}", f"sample efficiency per task, {model}",
                  f"rankings/rankings.json: efficiency[model={model}]",
                  ["task", "beta (paper est.)", "beta (ntkft)", "auc", "n_frac", "best score", "kernel-GD auc"])
        for e in eff:
            t.rows.append([label(e["task"]), e["beta"], e["beta_ntkft"], e["auc"], e["n_frac"], e["best_skill"],
                           e["kgd_auc"]])
        sec.tables.append(t)
        c = Table(f"correlations-{slug(model)}", f"rank correlation of beta with sample efficiency, {model}",
                  f"rankings/rankings.json: correlations[model={model}]",
                  ["group", "beta estimator", "measure", "rho", "p (one-sided)", "p (two-sided)", "tasks"])
        for r in d["correlations"]:
            if r["model"] == model:
                c.rows.append([r["group"], r["estimator"], r["measure"], r["rho"], r["p_one_sided"], r["p_two_sided"],
                               " ".join(label(x) for x in r["tasks"])])
        sec.tables.append(c)
        name = f"rankings_{slug(model)}.png"
        figs[name] = plots.rankings_figure(eff, f"beta against sample efficiency, {model}")
        sec.figures.append((name, f"beta against the area under the scale-free learning curve, {model}."))
    return sec


def _stopping_section(d: dict | None, figs: dict[str, bytes]) -> Section:
    sec = Section("4. Stopping: the RWY rule's T_hat, hold-out early stopping and the oracle")
    if d is None or not d.get("rows"):
        sec.text.append("Stage 4 has not run (or stage 2 computed no kernel-GD units).")
        return sec
    sec.text.append("Kernel GD on the eNTK with step alpha = 1/lambda_1 of K/N (one full-batch step = one epoch): "
                    "T_hat from the rule with R = sqrt(r^T G^+ r) and sigma from a pilot kernel-ridge fit (both "
                    "estimated, in standardised units for regression), the hold-out step and the oracle step (best test MSE) "
                    "on the same path, the test MSE "
                    "on the regression targets at each; beside them the fine-tuning cell of the same size and seed: "
                    "its hold-out best step, where it stopped, and the step with the best test score (AdamW steps; "
                    "epochs = steps / ceil(n_train / batch)). Step counts on the kernel path lie on a log grid.")
    for model in dict.fromkeys(r["model"] for r in d["rows"]):
        rows = [r for r in d["rows"] if r["model"] == model]
        t = Table(f"stopping-{slug(model)}", f"stopping steps, {model}", f"stopping/stopping.json: rows[model={model}]",
                  ["task", "n", "T_hat (steps = epochs)", "eta*", "sigma", "t hold-out", "t oracle", "MSE at T_hat",
                   "MSE hold-out", "MSE oracle", "FT best step", "FT stopped", "FT oracle step", "FT best epoch",
                   "FT oracle epoch"])
        for r in rows:
            t.rows.append([label(r["task"]), r["size"], r["t_hat"], r["eta_star"], r["sigma"], r["t_holdout"],
                           r["t_oracle"], r["mse_t_hat"], r["mse_holdout"], r["mse_oracle"], r["ft_best_step"],
                           r["ft_stopped_step"], r["ft_oracle_step"], r["ft_best_epoch"], r["ft_oracle_epoch"]])
        sec.tables.append(t)
        s = d["summary"].get(model)
        if s:
            sec.text.append(f"{model}: over {s['rows']} (task, size) points, T_hat lies a median "
                            f"{s['median_log10_t_hat_over_oracle']:+.2f} decades from the oracle step and is earlier in "
                            f"{s['t_hat_before_oracle']}; median excess test MSE over the oracle: T_hat "
                            f"{s['median_excess_mse_t_hat']:.1%}, hold-out {s['median_excess_mse_holdout']:.1%} "
                            "(stopping/stopping.json: summary).")
        name = f"stopping_{slug(model)}.png"
        figs[name] = plots.stopping_figure(rows, f"stopping on the kernel-GD path, {model}")
        sec.figures.append((name, f"T_hat and the hold-out step against the oracle step, {model}."))
    return sec


def _taskvec_section(d: dict | None, figs: dict[str, bytes]) -> Section:
    sec = Section("5. Task vectors (paper Section 7.2, Figure 3)")
    if d is None:
        sec.text.append("Stage 5 has not run.")
        return sec
    if d.get("skipped"):
        sec.text.append(f"Stage 5 did not complete: {d['skipped']}.")
    if d.get("finetuned"):
        t = Table("taskvec-finetuned", f"individually fine-tuned models ({d['model']}, full setting)",
                  "taskvec/taskvec.json: finetuned", ["task", "test accuracy", "test F1", "best step", "stopped"])
        for task, r in d["finetuned"].items():
            t.rows.append([label(task), r["test_best"].get("accuracy"), r["test_best"].get("f1"), r["best_step"],
                           r["stopped_step"]])
        sec.tables.append(t)
    rep = d.get("report")
    if not rep:
        return sec
    cos = rep["cosine"]
    names = cos["names"]
    t = Table("taskvec-cosine", "cosine similarity of task vectors", "taskvec/taskvec.json: report.cosine.matrix",
              ["task"] + [label(n) for n in names])
    for i, n in enumerate(names):
        t.rows.append([label(n)] + cos["matrix"][i])
    sec.tables.append(t)
    add = rep["addition"]
    a = Table("taskvec-addition", f"task addition, lambda = {add['best_lambda']:g} chosen on validation "
              f"(mean normalised {add['mean_normalised']:.3f})", "taskvec/taskvec.json: report.addition.test",
              ["task", "metric", "pretrained + head", "merged", "fine-tuned", "normalised", "paper normalised"],
              note=PAPER_TASKVEC_NOTE)
    for task, v in add["test"].items():
        a.rows.append([label(task), add["metrics"].get(task), v.get("pretrained"), v.get("merged"), v.get("finetuned"),
                       v.get("normalised"), None])
    sec.tables.append(a)
    lin = add.get("linearised") or {}
    if lin:
        li = Table("taskvec-linearised", "the merged model against its linearisation f_PT + <lambda sum tau, grad f_PT> "
                   "(Corollary 2)", "taskvec/taskvec.json: report.addition.linearised",
                   ["task", "rows", "relative error", "prediction agreement", "metric merged", "metric linearised"],
                   note="relative error = ||f_lin - f_MT|| / ||f_MT - f_PT||: 0 when the first-order term explains the "
                        "merge exactly, 1 when it explains nothing.")
        for task, v in lin.items():
            m = add["metrics"].get(task, "")
            li.rows.append([label(task), v.get("n"), v.get("rel_error"), v.get("agreement"), v.get(f"{m}_merged"),
                            v.get(f"{m}_linearised")])
        sec.tables.append(li)
    orth = rep["orthogonality"]
    o = Table("taskvec-orthogonality", f"kernel orthogonality (Assumption 5.1) per pair, eNTK on {orth['n']} samples "
              "per task", "taskvec/taskvec.json: report.orthogonality.rows",
              ["pair", "kernel ratio", "kernel ratio (centred)", "cosine", "pair normalised accuracy"],
              note="kernel ratio = ||K_12||_F / sqrt(||K_11||_F ||K_22||_F); 0 = orthogonal.")
    for r in orth["rows"]:
        o.rows.append([f"{label(r['task_a'])}-{label(r['task_b'])}", r.get("kernel_ratio"),
                       r.get("kernel_ratio_centred"), r.get("cosine"), r.get("normalised_accuracy")])
    sec.tables.append(o)
    if orth.get("spearman"):
        sec.text.append("Spearman over pairs: " + ", ".join(f"{k} {fmt(v)}" for k, v in orth["spearman"].items()) +
                        " (taskvec/taskvec.json: report.orthogonality.spearman).")
    name = "taskvec.png"
    figs[name] = plots.taskvec_figure(names, cos["matrix"], {t: v["normalised"] for t, v in add["test"].items()},
                                      f"task vectors, {d['model']}")
    sec.figures.append((name, "Task-vector cosine (left, paper Figure 3 left) and the merged model's normalised "
                              "accuracy (right, paper Figure 3 right)."))
    return sec


def _paper_section(spectra: dict | None, rankings: dict | None, taskvec: dict | None, cfg: dict) -> Section:
    sec = Section("Side by side with the paper")
    models = list(dict.fromkeys(s["model"] for s in (spectra or {}).get("spectra", [])))
    if not models:
        sec.text.append("Stage 1 has not run; nothing to compare.")
        return sec
    t = Table("paper-comparison", "the paper (GPT-Neo-1.3B) and this run",
              "spectra/spectra.json, rankings/rankings.json, taskvec/taskvec.json", ["quantity", "paper"] + models)
    for task, (b, _) in PAPER_BETA.items():
        vals = []
        for m in models:
            s = next((x for x in (spectra or {}).get("spectra", []) if x["model"] == m and x["task"] == task), None)
            vals.append(s["beta_paper_mean"] if s else None)
        t.rows.append([f"beta {label(task)}", b] + vals)
    for fam in [*FAMILIES, "all"]:
        paper_b = sorted([x for x in PAPER_BETA if fam == "all" or x in FAMILIES[fam]], key=lambda x: -PAPER_BETA[x][0])
        fam_paper = fam != "all"  # the paper ranks curves within a family only
        row_b: list[Any] = [f"beta order ({fam})", fmt(paper_b)]
        row_m: list[Any] = [f"measured order ({fam})", fmt(paper_b) if fam_paper else "not compared"]
        row_r: list[Any] = [f"Spearman rho(beta, auc) ({fam})", 1.0 if fam_paper else None]
        for m in models:
            ag = next((a for a in (rankings or {}).get("paper_agreement", []) if a["model"] == m and a["family"] == fam),
                      None)
            row_b.append(fmt(ag["beta_order"]) if ag else None)
            row_m.append(fmt(ag["measured_order"]) if ag else None)
            cr = next((c for c in (rankings or {}).get("correlations", []) if c["model"] == m and c["group"] == fam
                       and c["measure"] == "auc" and c["estimator"] == "paper"), None)
            row_r.append(cr["rho"] if cr else None)
        t.rows += [row_b, row_m, row_r]
    rep = (taskvec or {}).get("report")
    if rep and taskvec is not None:
        names = {m.get("label") or m["name"]: m["name"] for m in cfg.get("models", [])}
        owner = next((m for m in models if names.get(m, m) == taskvec["model"]), None)
        for task, v in rep["addition"]["test"].items():
            t.rows.append([f"normalised accuracy {label(task)}", "not given as a number"] +
                          [v.get("normalised") if m == owner else None for m in models])
    sec.tables.append(t)
    sec.text.append("The paper's measured order is its Figure 2 reading (SemRel > STS-12 > STS-B; Amazon > MRPC > RTE), "
                    "which is also its beta order, so its rho is 1 in each family. Over all six tasks the paper "
                    "compares no curves across families; its row shows the beta order only.")
    return sec


# ---------------------------------------------------------------- assembly


def sections(root: Path, figs: dict[str, bytes]) -> tuple[list[Section], dict]:
    """Every section of the report, built from the run folder's JSON files; figures land in `figs`."""
    cfg = _read(root, "config.json") or {}
    data = {k: _read(root, v) for k, v in STAGE_FILES.items()}
    secs = [_paper_section(data["spectra"], data["rankings"], data["taskvec"], cfg),
            _spectra_section(root, data["spectra"], cfg, figs),
            _curves_section(root, data["curves"], data["spectra"], cfg, figs),
            _rankings_section(data["rankings"], figs), _stopping_section(data["stopping"], figs),
            _taskvec_section(data["taskvec"], figs)]
    return secs, cfg


def _provenance(root: Path) -> dict:
    from .._io import run_meta

    meta = _read(root, "meta.json") or {}
    live = run_meta()
    return {"status": meta.get("status", "unknown"), "run finished": meta.get("time", "-"),
            "git commit": meta.get("git_commit") or live["git_commit"],
            "versions": meta.get("versions") or live["versions"], "host": meta.get("host", live["host"]),
            "report built": live["time"], "timings (s)": (_read(root, "timings.json") or {})}


READING = [
    "What this page measures, in plain words. For each model and task: the eNTK of the pretrained model on N sampled "
    "rows (the kernel that fine-tuning follows while the weights stay near their start) and how "
    "fast its eigenvalues decay, beta (larger beta = fewer samples needed, by the theory); learning curves (test "
    "error after fine-tuning on n rows, kernel gradient descent on the eNTK beside it); whether tasks with larger "
    "beta learn faster (a Spearman correlation with its permutation p-value); when the early-stopping rule says to "
    "stop, next to hold-out early stopping; and task vectors (how the fine-tuned weight changes of two tasks relate, "
    "and what adding them does).",
    "How to read it. Each table puts the paper's number, this run's and a baseline side by side: the constant "
    "predictor (training mean or majority class) for errors, chance for correlations. A number is a finding only "
    "where it beats its baseline by more than its spread; with 3-6 tasks only a strong correlation can be told "
    "from chance. A run of configs/quick.yaml (make demo) is too small to be evidence: it shows what each number "
    "means; configs/paper-cpu.yaml is the full run.",
]


def render(root: Path) -> tuple[str, str, dict[str, bytes]]:
    """(html, markdown, figures) of the run folder `root`."""
    figs: dict[str, bytes] = {}
    secs, cfg = sections(root, figs)
    prov = _provenance(root)
    title = "ntkft: reproduction of Sun & Raskutti, Section 7"
    cfg_yaml = yaml.safe_dump(cfg, sort_keys=False)
    prov_yaml = yaml.safe_dump(prov, sort_keys=False)
    md = [f"# {title}\n", f"Run folder `{root}`; status {prov['status']}; commit {prov['git commit']}.\n"]
    out = [f"<!doctype html><html><head><meta charset='utf-8'>"
           "<meta name='viewport' content='width=device-width, initial-scale=1'>"
           f"<title>{html.escape(title)}</title><style>{CSS}</style>"
           f"</head><body><h1>{html.escape(title)}</h1>",
           f"<p>Run folder <code>{html.escape(str(root))}</code>; status {html.escape(str(prov['status']))}.</p>"]
    md += [p + "\n" for p in READING]
    out += [f"<p class='reading'>{html.escape(p)}</p>" for p in READING]
    for s in secs:
        md.append(f"\n## {s.title}\n")
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        for p in s.text:
            md.append(p + "\n")
            out.append(f"<p>{html.escape(p)}</p>")
        for t in s.tables:
            md.append(t.markdown())
            out.append(t.html())
        for name, cap in s.figures:
            md.append(f"![{cap}](figures/{name})\n\n_{cap}_\n")
            b64 = base64.b64encode(figs[name]).decode()
            out.append(f"<figure><img src='data:image/png;base64,{b64}' alt='{html.escape(cap)}'>"
                       f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    md += ["\n## Config\n", "```yaml\n" + cfg_yaml + "```\n", "\n## Provenance\n", "```yaml\n" + prov_yaml + "```\n"]
    out += [f"<h2>Config</h2><pre>{html.escape(cfg_yaml)}</pre>", f"<h2>Provenance</h2><pre>{html.escape(prov_yaml)}</pre>",
            "</body></html>"]
    return "\n".join(out), "\n".join(md), figs


def write_report(rf: RunFolder) -> tuple[Path, Path]:
    """Build the report of the run folder `rf` and write report.html, summary.md and figures/*.png there."""
    from .._io import atomic_write_bytes

    page, md, figs = render(rf.root)
    for name, png in figs.items():
        atomic_write_bytes(rf.path(f"figures/{name}"), png)
    return rf.write_text("report.html", page), rf.write_text("summary.md", md)


def rebuild(run_dir: str | Path) -> tuple[Path, Path]:
    """`ntkft report RUN_DIR`: rebuild the report of an existing reproduction run folder."""
    root = Path(run_dir)
    meta = _read(root, "meta.json")
    if not isinstance(meta, dict) or meta.get("kind") != "reproduce":
        err = ConfigError(f"run_dir: {root} is not a reproduction run folder (no meta.json of kind 'reproduce')")
        err.param = "run_dir"
        raise err
    from .runner import _exclusive

    with _exclusive(root):
        rf = RunFolder(root, "reproduce", meta["key"])
        rf.open()
        return write_report(rf)


CSS = """body{font-family:system-ui,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f2f2f2}p.src{font-size:12px;color:#666}

p.reading{background:#f4f8ff;border-left:4px solid #4a78c2;padding:.5em .8em}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:12px;color:#555}pre{background:#f7f7f7;padding:.6em;
font-size:12px;overflow-x:auto}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}"""
