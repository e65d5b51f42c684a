"""The report of a reproduction run: a static HTML page (figures embedded) and a Markdown summary, both
built only from the JSON files in the run folder; every table names the file and the entries it shows."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import yaml

from .._runs import RunFolder
from ..errors import ConfigError
from .context import exclusive
from .paper import FAMILIES, PAPER_BETA, label
from .rankings import RankingsResult
from .registry import STAGES
from .spectra import SpectraResult
from .tables import RunView, Section, Table, fmt
from .taskvec import TaskVecStage


def _read(root: Path, rel: str) -> Any:
    p = root / rel
    return json.loads(p.read_text()) if p.is_file() else None


def load(root: Path) -> RunView:
    """The run folder's config and every finished stage's typed result (validated as it is read)."""
    results = [st.module().Result.read(root / st.file) for st in STAGES if (root / st.file).is_file()]
    return RunView(cfg=_read(root, "config.json") or {}, results=results)


def _paper_section(view: RunView) -> Section:
    """The paper's numbers beside this run's: betas, orders within each family, normalised accuracy."""
    sec = Section("Side by side with the paper")
    spectra, rankings, taskvec = view.of(SpectraResult), view.of(RankingsResult), view.of(TaskVecStage)
    models = list(dict.fromkeys(s.model for s in spectra.spectra)) if spectra else []
    if not models:
        sec.text.append("Stage 1 has not run; nothing to compare.")
        return sec
    t = Table("paper-comparison", "the paper (GPT-Neo-1.3B) and this run",
              "spectra/spectra.json, rankings/rankings.json, taskvec/taskvec.json", ["quantity", "paper"] + models)
    for task, (b, _) in PAPER_BETA.items():
        vals = []
        for m in models:
            s = spectra.get(m, task) if spectra else None
            vals.append(s.beta_paper_mean if s else None)
        t.rows.append([f"beta {label(task)}", b] + vals)
    for fam in [*FAMILIES, "all"]:
        paper_b = sorted([x for x in PAPER_BETA if fam == "all" or x in FAMILIES[fam]], key=lambda x: -PAPER_BETA[x][0])
        fam_paper = fam != "all"  # the paper ranks curves within a family only
        row_b: list[Any] = [f"beta order ({fam})", fmt(paper_b)]
        row_m: list[Any] = [f"measured order ({fam})", fmt(paper_b) if fam_paper else "not compared"]
        row_r: list[Any] = [f"Spearman rho(beta, auc) ({fam})", 1.0 if fam_paper else None]
        for m in models:
            ag = next((a for a in rankings.paper_agreement if a.model == m and a.family == fam),
                      None) if rankings else None
            row_b.append(fmt(ag.beta_order) if ag else None)
            row_m.append(fmt(ag.measured_order) if ag else None)
            cr = next((c for c in rankings.correlations if c.model == m and c.group == fam and c.measure == "auc"
                       and c.estimator == "paper"), None) if rankings else None
            row_r.append(cr.rho if cr else None)
        t.rows += [row_b, row_m, row_r]
    if taskvec is not None and taskvec.report is not None:
        names = {k: p["name"] for k, p in view.plans().items()}
        owner = next((m for m in models if names.get(m, m) == taskvec.model), None)
        for task, v in taskvec.report.addition.test.items():
            t.rows.append([f"normalised accuracy {label(task)}", "not given as a number"] +
                          [v.normalised if m == owner else None for m in models])
    sec.tables.append(t)
    sec.text.append("The paper's measured order is its Figure 2 reading (SemRel > STS-12 > STS-B; Amazon > MRPC > RTE), "
                    "which is also its beta order, so its rho is 1 in each family. Over all six tasks the paper "
                    "compares no curves across families; its row shows the beta order only.")
    return sec


# ---------------------------------------------------------------- assembly


def sections(root: Path, figs: dict[str, bytes]) -> tuple[list[Section], dict[str, Any]]:
    """Every section of the report, built from the run folder's typed results; figures land in `figs`. The
    paper comparison first, then each stage's own section, numbered as the registry numbers the stages."""
    view = load(root)
    secs = [_paper_section(view)]
    for st in STAGES:
        sec = st.module().section(view, figs)
        sec.title = f"{st.number}. {sec.title}"
        secs.append(sec)
    return secs, view.cfg


def _provenance(root: Path) -> dict[str, Any]:
    from .._io import run_meta

    meta = _read(root, "meta.json") or {}
    live = run_meta()
    return {"status": meta.get("status", "unknown"), "run finished": meta.get("time", "-"),
            "git commit": meta.get("git_commit") or live["git_commit"],
            "versions": meta.get("versions") or live["versions"], "host": meta.get("host", live["host"]),
            "report built": live["time"], "timings (s)": (_read(root, "timings.json") or {})}


def render(root: Path) -> tuple[str, str, dict[str, bytes]]:
    """(html, markdown, figures) of the run folder `root`."""
    figs: dict[str, bytes] = {}
    secs, cfg = sections(root, figs)
    prov = _provenance(root)
    title = "ntkft: reproduction of Sun & Raskutti, Section 7"
    cfg_yaml = yaml.safe_dump(cfg, sort_keys=False)
    prov_yaml = yaml.safe_dump(prov, sort_keys=False)
    md = [f"# {title}\n", f"Run folder `{root}`; status {prov['status']}; commit {prov['git commit']}.\n"]
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style>"
           f"</head><body><h1>{html.escape(title)}</h1>",
           f"<p>Run folder <code>{html.escape(str(root))}</code>; status {html.escape(str(prov['status']))}.</p>"]
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
        raise ConfigError(f"run_dir: {root} is not a reproduction run folder (no meta.json of kind 'reproduce')", param="run_dir")
    with exclusive(root):
        rf = RunFolder(root, "reproduce", meta["key"])
        rf.open()
        return write_report(rf)


CSS = """body{font-family:system-ui,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f2f2f2}p.src{font-size:12px;color:#666}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:12px;color:#555}pre{background:#f7f7f7;padding:.6em;
font-size:12px;overflow-x:auto}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}"""
