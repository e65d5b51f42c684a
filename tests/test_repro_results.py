"""Typed results of `reproduce` and the theory lab, the stage registry, and the reproduction's issue-27 fixes:
the committed JSON reads back, a renamed field fails in one line, the spectra's kernels are the fine-tuned
model's, the centred R^2, the Monte Carlo permutation p-value, and no import circle in either package. Also:
ReproConfig is composed of every stage's Options, and the committed run keeps its stage keys."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT
from ntkft.errors import DataError

REPRO = ROOT / "docs" / "results" / "repro"
THEORY = ROOT / "docs" / "results" / "theory"


def test_committed_reproduction_reads_back_and_renders():
    """Every stage's committed JSON validates as its typed result, and the report is built from them alone."""
    from ntkft.reproduce.registry import STAGES
    from ntkft.reproduce.report import render
    from ntkft.reproduce.spectra import SpectraResult

    for st in STAGES:
        res = st.module().Result.read(REPRO / st.file)
        raw = json.loads((REPRO / st.file).read_text())
        assert set(raw) <= set(res.to_dict()), st.name  # nothing dropped on the way in
    sp = SpectraResult.read(REPRO / "spectra/spectra.json")
    assert sp.get("minilm-l6", "semrel").beta_paper_mean == pytest.approx(0.5347, abs=1e-4)
    page, md, figs = render(REPRO)
    assert "R2 (centred)" in md and "before the head scale was recorded" in md and len(figs) == 11


def test_committed_theory_summaries_read_back_unchanged():
    from ntkft.theory.results import ArithmeticSummary, SampleSummary, WidthSummary

    for cls, name in ((WidthSummary, "width"), (SampleSummary, "sample"), (ArithmeticSummary, "arithmetic")):
        path = THEORY / f"{name}_summary.json"
        got = cls.read(path)
        assert got.to_dict() == json.loads(path.read_text()), name  # the same data back
    w = WidthSummary.read(THEORY / "width_summary.json")
    assert w.fits["theta_dist"].large.slope == pytest.approx(-0.451, abs=1e-3)
    assert w.per_width["512"].q("theta_dist").mean > 0


@pytest.mark.parametrize("path, old, new", [
    (REPRO / "spectra/spectra.json", "beta_paper_mean", "beta_paper_avg"),
    (REPRO / "curves/curves.json", "best_step", "best_stp"),
    (REPRO / "stopping/stopping.json", "t_oracle", "t_orcl"),
    (THEORY / "sample_summary.json", "window_mean", "window_avg"),
])
def test_a_renamed_field_fails_in_one_line_naming_file_and_field(tmp_path, path, old, new):
    from ntkft.reproduce.curves import CurvesResult
    from ntkft.reproduce.spectra import SpectraResult
    from ntkft.reproduce.stopping import StoppingResult
    from ntkft.theory.results import SampleSummary

    cls = {"spectra.json": SpectraResult, "curves.json": CurvesResult, "stopping.json": StoppingResult,
           "sample_summary.json": SampleSummary}[path.name]
    bad = tmp_path / path.name
    text = path.read_text()
    assert f'"{old}"' in text
    bad.write_text(text.replace(f'"{old}"', f'"{new}"', 1))
    with pytest.raises(DataError) as e:
        cls.read(bad)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and (old in msg or new in msg), msg


def test_registry_numbers_stages_and_closes_their_needs():
    from ntkft.config import make
    from ntkft.reproduce import ReproConfig
    from ntkft.reproduce.registry import STAGES, plan

    assert [s.name for s in STAGES] == ["spectra", "curves", "rankings", "stopping", "taskvec"]
    assert [s.name for s in plan([3])] == ["spectra", "curves", "rankings"]
    assert [s.name for s in plan([4, 1])] == ["spectra", "curves", "stopping"]
    desc = ReproConfig.model_fields["stages"].description or ""
    assert all(f"{s.number} {s.name}" in desc for s in STAGES)
    assert make(ReproConfig).stages == [1, 2, 3, 4, 5]
    for st in STAGES:  # every stage module offers what the runner and the report call
        mod = st.module()
        assert callable(mod.run) and callable(mod.section) and isinstance(mod.FILES, tuple) and mod.Result


def test_repro_config_is_composed_of_every_stages_options():
    """Each stage's settings live in its module's `Options`; ReproConfig inherits them all, last stage first, so
    its fields (YAML keys, --flags, config.json) read the run-wide ones, then stage 1's, 2's, ... Every
    validator of every Options reaches ReproConfig (pydantic keeps one per method name across the bases)."""
    from ntkft.reproduce import ReproConfig
    from ntkft.reproduce.options import RunOptions
    from ntkft.reproduce.registry import STAGES

    opts = [st.module().Options for st in STAGES]
    assert ReproConfig.__bases__ == tuple(reversed(opts))
    assert all(issubclass(o, RunOptions) for o in opts)
    own = [name for o in opts for name in o.model_fields if name not in RunOptions.model_fields]
    assert list(ReproConfig.model_fields) == list(RunOptions.model_fields) + own
    assert len(set(own)) == len(own)  # no stage redefines another's field
    for o in [RunOptions, *opts]:
        for kind in ("field_validators", "model_validators"):
            theirs = getattr(ReproConfig.__pydantic_decorators__, kind)
            for name, dec in getattr(o.__pydantic_decorators__, kind).items():
                fn = getattr(theirs.get(name), "func", None)
                assert getattr(fn, "__func__", fn) is getattr(dec.func, "__func__", dec.func), \
                    f"{o.__module__}.{o.__qualname__}.{name} is shadowed"


def test_committed_run_keeps_its_stage_keys_and_config_order(tmp_path, monkeypatch):
    """The committed run folder resumes under this code: each stage's resume key, as its `run` computes it from
    the run's config.json, is the key in the stage folder's meta.json; and config.json's keys keep their order
    (the config's field order). Task vectors are left out: their key holds the model's weight fingerprint."""
    from ntkft._runs import digest
    from ntkft.config import make
    from ntkft.reproduce import ReproConfig, curves, rankings, spectra, stopping
    from ntkft.reproduce.context import Context
    from ntkft.reproduce.tables import RunView

    raw = json.loads((REPRO / "config.json").read_text())
    cfg = make(ReproConfig, **raw)
    assert [k for k in cfg.model_dump() if k in raw] == list(raw)
    keys: dict[str, dict] = {}

    class Opened(Exception):
        pass

    def open_stage(self: Context, stage: str, key: dict, derived: bool = False) -> None:
        keys[stage] = key
        raise Opened

    monkeypatch.setattr(Context, "open_stage", open_stage)
    ctx = Context(cfg, tmp_path)
    view = RunView(cfg=raw, results=[spectra.Result.read(REPRO / "spectra/spectra.json"),
                                     curves.Result.read(REPRO / "curves/curves.json")])
    for mod in (spectra, curves, rankings, stopping):  # in run order: a key holds its upstream stages' keys
        name = mod.__name__.rsplit(".", 1)[1]
        with pytest.raises(Opened):
            mod.run(ctx, view)
        meta = json.loads((REPRO / name / "meta.json").read_text())
        assert digest(keys[name]) == meta["key_digest"], name


def _imports(path: Path, package: str) -> set[str]:
    """Sibling modules of `package` that the file imports anywhere (top level, functions, TYPE_CHECKING)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(f"ntkft.{package}."):
            out.add(node.module.split(".")[2])
    return out


@pytest.mark.parametrize("package", ["reproduce", "theory"])
def test_no_import_circle_inside_the_package(package):
    folder = ROOT / "src" / "ntkft" / package
    graph = {p.stem: _imports(p, package) for p in folder.glob("*.py") if p.stem != "__init__"}
    graph = {k: {v for v in vs if v in graph} for k, vs in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError(f"import circle: {' -> '.join(path + [node, nxt])}")
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_centred_r2_against_a_naive_fit():
    """An exact power law has centred R^2 1; with a bent spectrum the centred R^2 falls well below the paper's
    uncentred one (as on every committed eNTK: 0.68-0.95 centred against 0.98-1.00 uncentred)."""
    from ntkft.reproduce.spectra import SpectraResult, centred_r2
    from ntkft.spectrum import paper_beta

    k = np.arange(1, 101, dtype=np.float64)
    assert centred_r2(k ** -1.2, 0.6) == pytest.approx(1.0, abs=1e-12)
    lam = np.exp(-0.05 * k) * k ** -0.5
    fit = paper_beta(lam)
    x, y = np.log(k), np.log(lam / lam[0])
    resid = y - (-2 * fit.beta) * x
    naive = 1 - (resid ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert centred_r2(lam, fit.beta) == pytest.approx(naive, rel=1e-12)
    assert centred_r2(lam, fit.beta) < fit.r2 - 0.05
    sp = SpectraResult.read(REPRO / "spectra/spectra.json")
    cen = [s.r2_paper_centred for s in sp.spectra]
    assert all(s.r2_paper >= 0.98 for s in sp.spectra) and max(cen) < 0.96 and min(cen) > 0.6


def test_monte_carlo_permutation_p_matches_scipy():
    """n > 8 takes the Monte Carlo branch: its p agrees with scipy's permutation test (before the fix every draw
    repeated one permutation, so p was near 0 or 1)."""
    from scipy import stats

    from ntkft.reproduce.rankings import permutation_p, spearman

    rng = np.random.default_rng(7)
    x = np.arange(10.0)
    y = x + rng.normal(0, 6, 10)
    got = permutation_p(list(x), list(y), permutations=4000, seed=1)
    ref = stats.permutation_test((x, y), lambda a, b: spearman(a, b), permutation_type="pairings",
                                 alternative="greater", n_resamples=20000, random_state=3)
    assert not got["exact"] and 0.02 < ref.pvalue < 0.98
    assert got["p_one_sided"] == pytest.approx(ref.pvalue, abs=0.025)


def test_spectrum_kernels_are_the_finetuned_models(tmp_path, data_dir):
    """Stage 1's kernel is the eNTK of the model the plan fine-tunes, at its head sigma: equal to the kernel of
    that model built by hand, different from sigma 1's; a sigma-1 plan keeps its old cache key."""
    from ntkft.config import make
    from ntkft.kernel import kernel_matrix
    from ntkft.models import Readout
    from ntkft.reproduce import ReproConfig
    from ntkft.reproduce.context import Context
    from ntkft.reproduce.spectra import spectrum_kernel, unit_fp
    from ntkft.tasks import encode, subsample

    cfg = make(ReproConfig, models=[{"name": "tiny-bert", "sigma": 0.1}, {"name": "tiny-bert", "label": "one"}],
               spectrum_tasks=["stsb"], kernel_n=8, max_length=16)
    small, one = cfg.models
    ctx = Context(cfg, tmp_path)
    k = spectrum_kernel(ctx, small, "stsb", 0)
    loaded = ctx.loaded("tiny-bert")
    x = encode(loaded.tokenizer, loaded.kind, subsample(ctx.task_data("stsb", "train"), 8, seed=0), max_length=16)
    by_hand = kernel_matrix(Readout.from_loaded(loaded, out_dim=1, sigma=0.1, seed=0), x, params="all", progress=False)
    at_one = kernel_matrix(Readout.from_loaded(loaded, out_dim=1, sigma=1.0, seed=0), x, params="all", progress=False)
    assert torch.allclose(k, by_hand, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(k, at_one, rtol=1e-3)
    assert unit_fp(ctx, small, "stsb") != unit_fp(ctx, one, "stsb")
    assert unit_fp(ctx, one, "stsb") == ctx.unit_fp("tiny-bert", "stsb", layers=None, params="all")
