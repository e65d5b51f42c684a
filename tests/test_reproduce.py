"""ntkft.reproduce: stage arithmetic against closed forms and naive references, the real pipeline on a tiny
budget of MiniLM (every artefact, tables parsed back against their JSON), resume after a kill, and the CLI."""

from __future__ import annotations

import html.parser
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, killed_on_call
from ntkft.errors import ConfigError

# ---------------------------------------------------------------- arithmetic


def test_spearman_and_exact_permutation_p():
    from ntkft.reproduce.rankings import permutation_p, spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    p = permutation_p([0.6, 0.58, 0.54], [3.0, 2.0, 1.0])
    assert p["exact"] and p["rho"] == pytest.approx(1.0)
    assert p["p_one_sided"] == pytest.approx(1 / 6)  # one of the 3! orderings reaches rho = 1
    assert p["p_two_sided"] == pytest.approx(2 / 6)
    q = permutation_p(list(range(10)), list(range(10)), permutations=500)  # 10! > 40320: Monte Carlo
    assert not q["exact"] and 0 < q["p_one_sided"] <= 2 / 501


def test_efficiency_measures_closed_form():
    from ntkft.reproduce.rankings import auc, n_to_fraction

    assert auc([32, 64, 128], [0.2, 0.4, 0.6]) == pytest.approx(0.4)  # linear in log2 n: the mean
    assert auc([32, 128], [0.0, 1.0]) == pytest.approx(0.5)
    # best 0.8, goal 0.72 = 0.9 x 0.8: between 64 (0.6) and 128 (0.8) at 60% of the octave
    assert n_to_fraction([32, 64, 128], [0.4, 0.6, 0.8], 0.9) == pytest.approx(2 ** (6 + 0.6))
    assert n_to_fraction([32, 64], [0.9, 0.5], 0.9) == 32
    assert n_to_fraction([32, 64], [-0.1, -0.2], 0.9) == math.inf  # never above the baseline


def test_loglog_slope_recovers_a_power_law():
    from ntkft.reproduce.curves import loglog_slope

    n = [32, 32, 64, 64, 128, 128, 256, 256]
    rng = np.random.default_rng(0)
    err = [3.0 * x ** -0.4 * math.exp(0.02 * rng.standard_normal()) for x in n]
    s = loglog_slope(n, err)
    assert s["low"] < -0.4 < s["high"] and s["slope"] == pytest.approx(-0.4, abs=0.03)
    assert loglog_slope([32, 64], [0.5, 0.4]) is None  # fewer than 3 points: no interval


def test_kgd_path_matches_naive_iteration():
    from ntkft.reproduce.kgd import KgdPath, t_grid
    from ntkft.stopping import iterate_gd

    rng = np.random.default_rng(1)
    x = rng.standard_normal((14, 5))
    k = x @ x.T + 0.1
    y, f0 = rng.standard_normal(10), rng.standard_normal(10)
    tr, te = np.arange(10), np.arange(10, 14)
    path = KgdPath(k[np.ix_(tr, tr)], y, f0)
    ts = np.array([0, 1, 7, 40])
    fitted = path.predict(k[np.ix_(tr, tr)], f0, ts)
    for j, t in enumerate(ts):
        assert np.allclose(fitted[:, j], iterate_gd(k[np.ix_(tr, tr)], y, path.alpha, int(t), f0), atol=1e-9)
    # out of sample: f^t(x) = f0(x) + K(x, X) c_t with the same coefficients as in sample
    f0_new = rng.standard_normal(4)
    c = path.coefs(np.array([7]))[:, 0]
    assert np.allclose(path.predict(k[np.ix_(te, tr)], f0_new, np.array([7]))[:, 0], f0_new + k[np.ix_(te, tr)] @ c)
    g = t_grid(1000)
    assert g[0] == 0 and g[-1] == 1000 and np.all(np.diff(g) > 0)


@pytest.mark.parametrize("task_type", ["regression", "classification"])
def test_centred_kernel_gd_starts_at_the_constant_predictor(task_type):
    """center: kernel GD starts at the training targets' mean (as centred fine-tuning does), so t = 0 scores the
    input-ignoring baseline exactly; without it, at f_PT."""
    from ntkft.reproduce.curves import baseline
    from ntkft.reproduce.kgd import curve

    rng = np.random.default_rng(3)
    x = rng.standard_normal((70, 6))
    lab = rng.uniform(0, 5, 70) if task_type == "regression" else (rng.uniform(size=70) < 0.65).astype(np.float64)
    k = x @ x.T + 1.0
    unit = {"K_pool": torch.tensor(k[:50, :50]), "K_test_pool": torch.tensor(k[50:, :50]),
            "f_pool": torch.tensor(rng.standard_normal(50)), "f_test": torch.tensor(rng.standard_normal(20)),
            "y_pool": torch.tensor(lab[:50]), "y_test": torch.tensor(lab[50:])}
    for center in (True, False):
        pt = curve(unit, [20, 50], 0.2, task_type, 0, 200, center)[-1]
        base = baseline(task_type, lab[:40], lab[50:])
        if task_type == "regression":
            same = pt.test_init["mse"] == pytest.approx(base["mse_mean"], rel=1e-9)
        else:
            same = pt.test_init["accuracy"] == pytest.approx(base["accuracy_majority"])
        assert same == center
        assert pt.t_holdout >= 0 and np.isfinite(pt.test_holdout["mse_target"])


def test_learning_rate_ties_at_step_0_are_broken_by_the_runs_after_it():
    from ntkft.reproduce.curves import _tuning_key

    hist = lambda *v: [{"step": 10 * i, "val_loss": x} for i, x in enumerate(v)]  # noqa: E731
    grid = [{"lr": 1e-4, "best_val": 1.0, "history": hist(1.0, 1.3, 1.2)},
            {"lr": 3e-4, "best_val": 1.0, "history": hist(1.0, 1.1, 1.4)},
            {"lr": 1e-3, "best_val": 1.0, "history": hist(1.0, float("nan"))}]
    assert min(grid, key=_tuning_key)["lr"] == 3e-4  # both kept step 0; 3e-4 came closer after it
    grid.append({"lr": 3e-3, "best_val": 0.9, "history": hist(1.0, 0.9)})
    assert min(grid, key=_tuning_key)["lr"] == 3e-3  # a better best still wins


def test_baseline_and_skill():
    from ntkft.reproduce.curves import baseline, skill

    b = baseline("regression", np.array([1.0, 3.0]), np.array([0.0, 4.0]))
    assert b["var_test"] == pytest.approx(4.0) and b["mse_mean"] == pytest.approx(4.0)
    assert skill("regression", {"mse": 1.0}, b) == pytest.approx(0.75)
    c = baseline("classification", np.array([1, 1, 0]), np.array([1, 0, 1, 1]))
    assert c["accuracy_majority"] == pytest.approx(0.75) and c["f1_majority"] == pytest.approx(2 * 0.75 / 1.75)
    assert skill("classification", {"accuracy": 0.875}, c) == pytest.approx(0.5)


def test_configs_ship_and_validate():
    from ntkft.config import load_config, make
    from ntkft.reproduce import ReproConfig
    from ntkft.reproduce.config import quick_config_path

    for name in ("quick", "paper-cpu", "gpt-neo"):
        cfg = load_config(ReproConfig, ROOT / "configs" / f"{name}.yaml")
        assert cfg.stages == [1, 2, 3, 4, 5]
    assert quick_config_path() == ROOT / "configs" / "quick.yaml"
    assert len(load_config(ReproConfig, quick_config_path()).models) == 1
    assert make(ReproConfig, models="minilm-l6,tiny-bert").models[1].name == "tiny-bert"
    two = make(ReproConfig, models=["minilm-l6", {"name": "minilm-l6", "setting": "probe", "label": "minilm-probe"}])
    assert [m.id for m in two.models] == ["minilm-l6", "minilm-probe"]
    bad = [{"curve_tasks": ["nope"]}, {"sizes": [32, 64], "tune_size": 128}, {"stages": [6]},
           {"models": [{"name": "minilm-l6", "layers": 2}]}, {"kernel_n": float("nan")}, {"sizes": [4, 16]},
           {"models": [{"name": "minilm-l6", "lrs": [-1.0]}]}, {"permutations": 5},
           {"models": ["minilm-l6", {"name": "minilm-l6", "setting": "probe"}]},
           {"models": [{"name": "minilm-l6", "sizes": [32, 1024]}]}, {"models": [{"name": "minilm-l6", "sizes": [32]}]},
           {"models": [{"name": "minilm-l6", "sigma": 0.0}]}]
    for kw in bad:
        with pytest.raises(ConfigError) as e:
            make(ReproConfig, **kw)
        assert "\n" not in str(e.value)


def test_a_plan_runs_its_own_sizes_and_head_scale(tmp_path):
    """A plan's sizes subset and sigma reach the cells it fine-tunes; the other plan keeps the run's sizes."""
    from ntkft.config import make
    from ntkft.reproduce import ReproConfig
    from ntkft.reproduce.context import Context
    from ntkft.reproduce.curves import finetune_config

    cfg = make(ReproConfig, models=[{"name": "smollm2-135m", "setting": "head", "layers": 6, "sigma": 0.1,
                                     "sizes": [512, 32, 128], "seeds": 1}, "minilm-l6"], sizes=[32, 64, 128, 256, 512], seeds=3)
    big, small = cfg.models
    assert cfg.tuning_size == 128 and cfg.plan_sizes(big) == [32, 128, 512]
    assert cfg.plan_sizes(small) == [32, 64, 128, 256, 512]
    assert (cfg.plan_seeds(big), cfg.plan_seeds(small)) == (1, 3)
    ctx = Context(cfg, tmp_path)
    assert finetune_config(ctx, big, "stsb", 32, 0, 1e-4).sigma == 0.1
    assert finetune_config(ctx, small, "stsb", 32, 0, 1e-4).sigma == 1.0


# ---------------------------------------------------------------- the pipeline on a real model


TINY = {
    "models": [{"name": "minilm-l6", "setting": "full", "lrs": [1e-4], "max_steps": 4, "batch_size": 8,
                "eval_every": 2, "patience": 2}],
    "max_length": 32, "spectrum_tasks": ["stsb", "rte"], "kernel_n": 12, "draws": 2, "ci_draws": 20,
    "curve_tasks": ["stsb", "rte"], "sizes": [8, 16], "seeds": 1, "val": 0.25, "n_test": 16, "tune_size": 16,
    "kgd_max_n": 16, "kgd_n_test": 12, "permutations": 100,
    "taskvec_tasks": ["sst2", "rte"], "taskvec_n_train": 16, "taskvec_steps": 2, "taskvec_n_test": 12,
    "taskvec_n_val": 8, "taskvec_lambdas": [1.0], "taskvec_kernel_n": 4,
}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, data_dir):
    from ntkft.config import make
    from ntkft.reproduce import ReproConfig, reproduce

    out = tmp_path_factory.mktemp("repro") / "run"
    res = reproduce(make(ReproConfig, **TINY), out, progress=False)
    return out, res


class _Tables(html.parser.HTMLParser):
    """Every <table id=...> of a page as {id: [[cell, ...], ...]} (header row first)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._id, self._row, self._cell = None, None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._id = dict(attrs)["id"]
            self.tables[self._id] = []
        elif tag == "tr" and self._id:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._id].append(self._row)
            self._row = None
        elif tag == "table":
            self._id = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def md_tables(text: str) -> dict[str, list[list[str]]]:
    """Every Markdown table that follows an anchor `<a id="...">` as {id: rows} (header row first)."""
    out, lines = {}, text.splitlines()
    for i, line in enumerate(lines):
        if '<a id="' in line:
            tid = line.split('<a id="')[1].split('"')[0]
            j = i + 1
            while j < len(lines) and not lines[j].startswith("|"):
                j += 1
            rows = []
            while j < len(lines) and lines[j].startswith("|"):
                if not lines[j].startswith("|---"):
                    rows.append([c.strip() for c in lines[j].strip().strip("|").split("|")])
                j += 1
            out[tid] = rows
    return out


def _num(cell: str) -> float:
    return float("nan") if cell == "-" else float(cell)


def _close(cell: str, value) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return cell == "-"
    return abs(_num(cell) - value) <= 5.1e-4 * max(1.0, abs(value))


@pytest.mark.slow
def test_pipeline_writes_every_artefact(real_run):
    out, res = real_run
    for f in ["meta.json", "config.json", "timings.json", "report.html", "summary.md", "spectra/spectra.json",
              "spectra/beta.csv", "curves/curves.json", "curves/curves.csv", "rankings/rankings.json",
              "rankings/correlations.csv", "stopping/stopping.json", "stopping/stopping.csv", "taskvec/taskvec.json",
              "figures/spectra_minilm-l6.png", "figures/curves_minilm-l6_regression.png",
              "figures/curves_minilm-l6_classification.png", "figures/rankings_minilm-l6.png",
              "figures/stopping_minilm-l6.png", "figures/taskvec.png"]:
        assert (out / f).is_file(), f
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["kind"] == "reproduce" and "versions" in meta
    for stage in ("spectra", "curves", "rankings", "stopping", "taskvec"):
        assert json.loads((out / stage / "meta.json").read_text())["status"] == "complete", stage
    tv = json.loads((out / "taskvec/taskvec.json").read_text())
    assert tv["skipped"] is None and tv["report"]["cosine"]["names"] == ["sst2", "rte"]
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6 and "git commit" in page
    curves = json.loads((out / "curves/curves.json").read_text())
    cells = [c for c in curves["cells"] if "failed" not in c]
    assert len(cells) == 2 * 2 and all(c["history"] and "test_loss" in c["history"][0] for c in cells)
    assert all(c["oracle_step"] is not None for c in cells)
    assert set(res.stages) == {"spectra", "curves", "rankings", "stopping", "taskvec"}


@pytest.mark.slow
def test_report_tables_parse_back_to_their_json(real_run):
    out, _ = real_run
    parser = _Tables()
    parser.feed((out / "report.html").read_text())
    html_t, md_t = parser.tables, md_tables((out / "summary.md").read_text())
    assert set(html_t) == set(md_t) and {"paper-comparison", "beta-minilm-l6", "score-minilm-l6",
                                          "stopping-minilm-l6", "taskvec-cosine"} <= set(html_t)
    for tid in html_t:  # the page and the summary show the same numbers
        assert [[c.replace("/", "|") for c in r] for r in html_t[tid]] == \
               [[c.replace("/", "|") for c in r] for r in md_t[tid]], tid
    spectra = json.loads((out / "spectra/spectra.json").read_text())["spectra"]
    beta = html_t["beta-minilm-l6"]
    head = beta[0]
    for row, s in zip(beta[1:], spectra, strict=True):
        assert _close(row[head.index("beta (paper est.)")], s["beta_paper_mean"])
        assert _close(row[head.index("sd")], s["beta_paper_sd"])
        assert _close(row[head.index("beta")], s["beta_ntkft_mean"])
        assert _close(row[head.index("CI low")], s["ci_low"])
    comp = {r[0]: r for r in html_t["paper-comparison"][1:]}
    assert _close(comp["beta STS-B"][1], 0.54) and _close(comp["beta RTE"][2], spectra[1]["beta_paper_mean"])
    curves = json.loads((out / "curves/curves.json").read_text())["curves"]
    score = md_t["score-minilm-l6"]
    for row, c in zip(score[1:], curves, strict=True):
        for j, n in enumerate(c["sizes"]):
            assert _close(row[score[0].index(f"n={n}")], c["metrics"]["skill"][j])
    stop = json.loads((out / "stopping/stopping.json").read_text())["rows"]
    st = md_t["stopping-minilm-l6"]
    assert len(st) - 1 == len(stop)
    for row, r in zip(st[1:], stop, strict=True):
        assert row[st[0].index("T_hat (steps = epochs)")] == str(r["t_hat"])
        assert row[st[0].index("t oracle")] == str(r["t_oracle"])
        assert _close(row[st[0].index("MSE oracle")], r["mse_oracle"])
    cos = json.loads((out / "taskvec/taskvec.json").read_text())["report"]["cosine"]["matrix"]
    assert all(math.isfinite(x) for row in cos for x in row)  # every task vector non-zero: step 0 is no candidate
    for i, row in enumerate(html_t["taskvec-cosine"][1:]):
        assert all(_close(cell, cos[i][j]) for j, cell in enumerate(row[1:]))
    rk = json.loads((out / "rankings/rankings.json").read_text())
    corr = html_t["correlations-minilm-l6"]
    assert len(corr) - 1 == len([c for c in rk["correlations"] if c["model"] == "minilm-l6"])


@pytest.mark.slow
def test_report_cli_rebuilds_and_rejects_other_folders(real_run, tmp_path, capsys):
    out, _ = real_run
    before = (out / "summary.md").read_text()
    (out / "summary.md").unlink()
    r = subprocess.run([sys.executable, "-m", "ntkft.cli", "report", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    after = (out / "summary.md").read_text()
    strip = (lambda t: [x for x in t.splitlines() if "report built" not in x])  # noqa: E731
    assert strip(after) == strip(before)
    from conftest import run_cli

    code, _, err = run_cli(["report", str(tmp_path)], capsys)
    assert code == 2 and err.strip().startswith("ntkft: error:") and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_reproduce_cli_on_a_finished_run_prints_its_results(real_run, tmp_path, capsys):
    """The command line over the same config reads every stage back (nothing recomputed) and prints both betas."""
    import yaml

    from conftest import run_cli

    out, res = real_run
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    code, printed, err = run_cli(["reproduce", "--config", str(cfg), "--out", str(out)], capsys)
    assert code == 0, err
    s = res.stages["spectra"].spectra[0]
    assert f"{s.model} {s.task}: beta (paper est.) {s.beta_paper_mean:.3f}" in printed
    assert f"beta {s.beta_ntkft_mean:.3f}" in printed and "report:" in printed


# ---------------------------------------------------------------- resume


RESUME = {"models": [{"name": "tiny-bert", "lrs": [1e-3], "max_steps": 3, "batch_size": 8, "patience": 1}],
          "stages": [1, 2, 4], "max_length": 24, "spectrum_tasks": ["stsb", "rte"], "kernel_n": 10, "draws": 2,
          "ci_draws": 10, "curve_tasks": ["stsb", "rte"], "sizes": [8, 16], "seeds": 1, "n_test": 10,
          "tune_size": 8, "track_test": False, "kgd_max_n": 16, "kgd_n_test": 10}


def test_killed_stages_resume_without_recomputing(tmp_path, monkeypatch, data_dir):
    from ntkft.config import make
    from ntkft.reproduce import ReproConfig, curves, reproduce, spectra

    cfg = make(ReproConfig, **RESUME)
    out = tmp_path / "run"
    calls = {"kernel": 0, "cell": 0, "kgd": 0}

    def counting(name, fn):
        def wrapper(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapper

    real_kernel, real_cell, real_kgd = spectra.spectrum_kernel, curves.finetune_cell, curves.kgd_kernels
    monkeypatch.setattr(curves, "kgd_kernels", counting("kgd", real_kgd))
    monkeypatch.setattr(spectra, "spectrum_kernel", killed_on_call(counting("kernel", real_kernel), 3))
    with pytest.raises(KeyboardInterrupt):  # killed on the third of four kernels: two finished
        reproduce(cfg, out, progress=False)
    assert calls["kernel"] == 2 and not (out / "spectra/spectra.json").exists()
    monkeypatch.setattr(spectra, "spectrum_kernel", counting("kernel", real_kernel))
    monkeypatch.setattr(curves, "finetune_cell", killed_on_call(counting("cell", real_cell), 3))
    with pytest.raises(KeyboardInterrupt):  # stage 1 finishes from its cache; stage 2 killed on its third cell
        # (the two learning-rate grids come first, then per task its curve's cells and its kernel-GD unit)
        reproduce(cfg, out, progress=False)
    assert calls["kernel"] == 4  # only the two kernels not finished before the kill
    assert (out / "spectra/spectra.json").is_file() and calls["cell"] == 2 and calls["kgd"] == 0
    monkeypatch.setattr(curves, "finetune_cell", counting("cell", real_cell))
    res = reproduce(cfg, out, progress=False)
    assert calls == {"kernel": 4, "cell": 4, "kgd": 2}  # 4 cells and 2 kernel-GD units, each computed once
    assert json.loads((out / "meta.json").read_text())["status"] == "complete"
    first = res.stages["curves"].to_dict()
    res2 = reproduce(cfg, out, progress=False)  # a finished run recomputes nothing and reads back the same
    assert calls == {"kernel": 4, "cell": 4, "kgd": 2}
    # (compared as JSON text: a kept constant predictor's correlation is NaN, and NaN != NaN)
    assert json.dumps(res2.stages["curves"].to_dict()["curves"]) == json.dumps(first["curves"])
    # a longer list of sizes reuses every finished unit; a changed training setting is refused in one line
    res3 = reproduce(make(ReproConfig, **{**RESUME, "sizes": [8, 16, 24]}), out, progress=False)
    assert calls == {"kernel": 4, "cell": 6, "kgd": 2}
    assert [c.sizes for c in res3.stages["curves"].curves] == [[8, 16, 24]] * 2
    with pytest.raises(ConfigError, match="different"):
        reproduce(make(ReproConfig, **{**RESUME, "n_test": 12}), out, progress=False)
    # a changed fine-tuning default (here: step 0 no longer evaluated) reruns every cell of the finished stage
    real_cfg = curves.finetune_config
    monkeypatch.setattr(curves, "finetune_config", lambda *a: real_cfg(*a).model_copy(update={"eval_at_start": False}))
    res4 = reproduce(make(ReproConfig, **{**RESUME, "sizes": [8, 16, 24]}), out, progress=False)
    assert calls == {"kernel": 4, "cell": 12, "kgd": 2}
    assert all(h["history"][0]["step"] > 0 for h in json.loads((out / "curves/curves.json").read_text())["cells"])
    assert res4.stages["curves"].curves[0].sizes == [8, 16, 24]


def test_units_in_worker_processes_match_one_process(tmp_path, monkeypatch, data_dir):
    """workers = 2 computes every fine-tuning cell and kernel-GD unit in other processes (this process's
    functions are never called) and gets what one process gets, to rounding; a one-process rerun reads it back."""
    import torch

    from ntkft.config import make
    from ntkft.reproduce import ReproConfig, curves, reproduce

    base = {**RESUME, "stages": [2]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' share of the threads too: the same sums on both sides
    try:
        one = reproduce(make(ReproConfig, **base), tmp_path / "one", progress=False).stages["curves"]
    finally:
        torch.set_num_threads(threads)

    def here(*a, **k):
        raise AssertionError("a unit was computed in the parent process")

    bars: list = []
    stage = tmp_path / "two" / "curves"

    class Bar:  # the stage bar: each unit counted once, as it is written, whichever process made it
        def __init__(self, total: int, **_: object) -> None:
            self.total, self.n, self.lag = total, 0, 0
            bars.append(self)

        def update(self, k: int = 1) -> None:
            self.n += k
            written = len(list(stage.glob("cells/**/*.json"))) + len(list(stage.glob("kgd/**/*.safetensors")))
            self.lag = max(self.lag, written - self.n)

        def set_postfix_str(self, _: str) -> None: ...
        def close(self) -> None: ...

    monkeypatch.setattr(curves, "finetune_cell", here)
    monkeypatch.setattr(curves, "kgd_kernels", here)
    monkeypatch.setattr(curves, "tqdm", Bar)
    two = reproduce(make(ReproConfig, **base, workers=2), tmp_path / "two", progress=False).stages["curves"]
    assert [(b.n, b.total, b.lag) for b in bars] == [(bars[0].total, bars[0].total, 0)] and bars[0].total > 0
    assert len(two.cells) == len(one.cells) == 4 and len(two.kgd_points) == len(one.kgd_points) == 4
    for a, b in zip(one.cells, two.cells, strict=True):
        assert (a.task, a.size, a.seed, a.lr, a.best_step) == (b.task, b.size, b.seed, b.lr, b.best_step)
        for k, v in a.test_best.items():
            assert b.test_best[k] == pytest.approx(v, rel=1e-5, abs=1e-7, nan_ok=True), k
    for a, b in zip(one.curves, two.curves, strict=True):
        for k, v in a.kgd.items():
            assert b.kgd[k] == pytest.approx(v, rel=1e-5, abs=1e-7, nan_ok=True), k
    again = reproduce(make(ReproConfig, **base), tmp_path / "two", progress=False).stages["curves"]
    assert json.dumps(again.to_dict()["curves"]) == json.dumps(two.to_dict()["curves"])  # read back, not rerun


def test_cli_quick_and_config_conflict_is_one_line(tmp_path, capsys):
    from conftest import run_cli

    code, _, err = run_cli(["reproduce", "--quick", "--config", "x.yaml", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "--quick" in err
    code, _, err = run_cli(["reproduce", "--sizes", "4,8", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and err.strip().startswith("ntkft: error: --sizes") and "Traceback" not in err
    code, out, _ = run_cli(["reproduce", "--help"], capsys)
    assert code == 0 and "--kernel-n" in out and "--quick" in out
    assert not Path(tmp_path / "r").exists()


def test_a_second_process_cannot_write_the_same_run_folder(tmp_path, data_dir):
    import fcntl

    from ntkft.config import make
    from ntkft.reproduce import ReproConfig, reproduce

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".ntkft-lock", "a+") as fh:  # what a running `ntkft reproduce` holds
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="another ntkft process"):
            reproduce(make(ReproConfig, **RESUME), out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".ntkft-lock"]
