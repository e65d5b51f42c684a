"""`ntkft select` (issue 28): the candidate is finetune's model, ranking, resume after a kill, CLI errors, curve maths."""

from __future__ import annotations

import json
import math

import pytest
import torch

import ntkft
from conftest import killed_on_call, run_cli
from ntkft.errors import ConfigError
from ntkft.select import run as select_run
from ntkft.select.config import SelectConfig, parse_candidate
from ntkft.select.report import table as select_run_table
from ntkft.select.run import Curve, at_n, n_for

FAST = {"task": "sst2", "n": 48, "pool": 96, "n_subsets": 4, "progress": False}


@pytest.mark.parametrize("spec,setting,layers", [("tiny-bert", "full", None), ("tiny-llama@1", "head", 1)])
def test_candidate_is_the_model_finetune_builds(spec, setting, layers, data_dir):
    """Same parameters (names and values) and the same head weight as finetune's module before its first step (the
    head's bias differs: finetune centres it, and the eNTK has no b in it); eval mode."""
    from ntkft.finetune import FinetuneConfig, Predictor

    for task in ("sst2", "stsb"):
        cfg = FinetuneConfig.make(model=spec.split("@")[0], task=task, setting=setting, layers=layers, n_train=16,
                                  n_test=8, sigma=0.7, seed=3)
        ft = Predictor(cfg).setup().model
        out_dim = 2 if task == "sst2" else 1
        _, ours = select_run.build_candidate(parse_candidate(spec), out_dim, sigma=0.7, seed=3)
        theirs = dict(ft.named_parameters())
        mine = dict(ours.named_parameters())
        assert sorted(theirs) == sorted(mine)
        for name, p in mine.items():
            if name != "head.bias":
                assert torch.equal(p, theirs[name]), name
        assert ours.head.weight.shape[0] == out_dim and not ours.training


def test_model_start_is_finetunes_step_zero(tmp_path, data_dir):
    """start='model': the curve's f_0 = mean + sd (g_0 - mean g_0), g_0 = the candidate's new head on its pooled
    features, is finetune's step-0 prediction (standardised targets, centred head bias) on the same rows."""
    from ntkft.finetune import FinetuneConfig, Predictor

    cfg = FinetuneConfig.make(model="tiny-bert", task="stsb", n_train=40, n_test=8, sigma=2.0, seed=0)
    pred = Predictor(cfg).setup()
    _, ours = select_run.build_candidate(parse_candidate("tiny-bert"), 1, sigma=2.0, seed=0)
    tr = pred.train
    with torch.no_grad():
        g0 = ours.head(ours.features(tr.ids, tr.mask)).squeeze(-1).double()
    y = tr.y.double()
    f0 = y.mean() + y.std(unbiased=False) * (g0 - g0.mean())
    assert torch.allclose(pred.predict(tr).double(), f0, rtol=1e-4, atol=1e-4 * float(y.std()))
    res = ntkft.select(models=["tiny-bert"], task="stsb", n=48, pool=96, n_subsets=4, sigma=2.0, progress=False,
                       start="model", out=tmp_path / "m")
    plain = ntkft.select(models=["tiny-bert"], task="stsb", n=48, pool=96, n_subsets=4, sigma=2.0, progress=False)
    assert res.candidates[0].curve.mean != plain.candidates[0].curve.mean
    assert res.candidates[0].curve.baseline == plain.candidates[0].curve.baseline
    assert (res.start, plain.start) == ("model", "constant")
    assert "from the model's own step-0 function" in select_run_table(res)
    with pytest.raises(ConfigError, match="another"):  # the start is part of the run's key
        ntkft.select(models=["tiny-bert"], task="stsb", n=48, pool=96, n_subsets=4, sigma=2.0, progress=False,
                     out=tmp_path / "m")


def test_trained_model_ranks_above_random(tmp_path, data_dir):
    """A tiny-bert fine-tuned on SST-2 is ranked above the same random tiny-bert, by the curve, KTA and LogME."""
    from ntkft.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig.make(model="tiny-bert", task="sst2", n_train=256, n_test=16, lr=1e-3, max_steps=150,
                              batch_size=32, patience=100, eval_at_start=False)
    finetune(cfg, tmp_path / "ft", progress=False)
    res = ntkft.select(models=["tiny-bert", str(tmp_path / "ft")], **{**FAST, "pool": 128, "n_subsets": 10})
    assert isinstance(res, ntkft.SelectResult)
    assert [c.name for c in res.candidates] == [str(tmp_path / "ft"), "tiny-bert"]
    trained, rand = res.candidates
    assert trained.kta > rand.kta and trained.logme > rand.logme
    assert trained.error_at_n < trained.baseline_at_n


def test_resume_after_a_kill_mid_candidate(tmp_path, data_dir, monkeypatch):
    """Killed in the second candidate after its kernel: the rerun computes no kernel again and gives the same
    ranking and numbers as an uninterrupted run."""
    models = ["tiny-bert", "tiny-gpt2"]
    monkeypatch.setattr(select_run, "predict", killed_on_call(select_run.predict, 2))
    with pytest.raises(KeyboardInterrupt):
        ntkft.select(models=models, out=tmp_path / "a", **FAST)
    assert (tmp_path / "a" / "candidates" / "00.json").is_file()
    assert (tmp_path / "a" / "kernels" / "01.safetensors").is_file()
    monkeypatch.undo()
    calls = {"n": 0}
    real = select_run.kernel_matrix

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(select_run, "kernel_matrix", counting)
    resumed = ntkft.select(models=models, out=tmp_path / "a", **FAST)
    assert calls["n"] == 0
    fresh = ntkft.select(models=models, out=tmp_path / "b", **FAST)
    assert calls["n"] == 2
    strip = lambda r: [{k: v for k, v in c.model_dump().items() if "seconds" not in k} for c in r.candidates]  # noqa: E731
    assert strip(resumed) == strip(fresh)
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["status"] == "complete" and "work" not in meta["files"]
    listed = json.loads((tmp_path / "a" / "select.json").read_text())["candidates"]
    assert [c["name"] for c in listed] == [c.name for c in fresh.candidates]
    assert (tmp_path / "a" / "select.csv").read_text().count("\n") == 3
    assert (tmp_path / "a" / "curves.png").stat().st_size > 1000 and (tmp_path / "a" / "index.html").is_file()


def _errors(err: str) -> int:
    """Lines of ntkft's own on stderr (transformers may draw its weight-loading bar there first); no traceback."""
    assert "Traceback" not in err
    return sum(line.startswith("ntkft:") for line in err.splitlines())


def test_cli_errors(tmp_path, capsys, data_dir):
    out = tmp_path / "sel"
    for models, words in [("tiny-bert,nope", "unknown model 'nope'"), ("tiny-bert@x", "block count"),
                          ("tiny-bert,tiny-bert", "listed twice"), ("tiny-bert@9", "has 2")]:
        code, _, err = run_cli(["select", "--models", models, "--task", "sst2", "--pool", "64", "--out", str(out)],
                               capsys)
        assert code == 2 and words in err and _errors(err) == 1, err
        if "@9" not in models:
            assert not out.exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert"}')  # no weights, no tokenizer: no eNTK
    args = ["select", "--models", f"tiny-bert,{broken}", "--task", "sst2", "--n", "32", "--pool", "64",
            "--n-subsets", "3"]
    code, _, err = run_cli([*args, "--out", str(tmp_path / "s1")], capsys)
    assert code == 2 and f"candidate '{broken}' gives no eNTK" in err and _errors(err) == 1
    code, out_text, _ = run_cli([*args, "--skip-failed", "--out", str(tmp_path / "s2")], capsys)
    assert code == 0 and "failed" in out_text.splitlines()[2] and "tiny-bert" in out_text.splitlines()[1]


def test_at_n_and_n_for_target_interpolate_and_extrapolate():
    """On an exact c + a n^-r curve: interpolation inside the pool, the fitted law beyond it (flagged)."""
    sizes = [16, 32, 64, 128, 256]
    law = lambda n: 0.2 + 3.0 * n ** -0.5  # noqa: E731
    vals = [law(n) for n in sizes]
    cur = Curve(sizes=sizes, mean=vals, low=[v - 0.01 for v in vals], high=[v + 0.01 for v in vals],
                baseline=[1.0] * 5, metric="mse")
    mean, low, high, base, extra = at_n(cur, 64)
    assert mean == pytest.approx(law(64)) and not extra and low < mean < high and base == 1.0
    mean, _, _, _, extra = at_n(cur, 1024)
    assert extra and mean == pytest.approx(law(1024), rel=1e-3)
    n, extra = n_for(cur, law(100))
    assert not extra and 64 < n < 128
    n, extra = n_for(cur, law(2000))
    assert extra and n == pytest.approx(2000, rel=0.02)
    assert n_for(cur, 0.1) == (None, True)  # below the limit c = 0.2


def test_config_parses_candidates(tmp_path):
    cfg = SelectConfig.make(models="tiny-bert, tiny-llama@1")
    assert [(c.name, c.setting, c.layers) for c in cfg.candidates()] == [("tiny-bert", "full", None),
                                                                         ("tiny-llama@1", "head", 1)]
    with pytest.raises(ConfigError, match="no such GGUF"):
        parse_candidate(str(tmp_path / "x.gguf"))


def test_validation_harness_end_to_end_resumes_after_a_kill(tmp_path, data_dir, monkeypatch):
    """Tiny zoo (a cut, an intermediate-task checkpoint), one target task, two learning rates and two seeds: killed at
    the fourth fine-tuning cell, the same call resumes (no cell run twice) and writes summary.json in the issue's
    schema and a README that opens with the verdict."""
    from ntkft.select import validation as val

    cfg = val.ValidationConfig(
        candidates=[val.ZooEntry(name="bert", model="tiny-bert"), val.ZooEntry(name="bert1", model="tiny-bert", layers=1),
                    val.ZooEntry(name="bert-sst2", model="tiny-bert", intermediate="sst2")],
        tasks=["cr"], sizes=[16], seeds=[0, 1], pool=40, n_subsets=3, max_length=16, n_test=16, epochs=1,
        min_steps=2, batch_size=8, lrs=[1e-3, 1e-4], intermediate_n=24, intermediate_steps=2, n_perm=100)
    with pytest.raises(ConfigError, match="intermediate"):
        val.ValidationConfig.make(**{**cfg.model_dump(), "tasks": ["sst2"]})
    real = val.Harness.cell
    monkeypatch.setattr(val.Harness, "cell", killed_on_call(real, 4))
    with pytest.raises(KeyboardInterrupt):
        val.Harness(cfg, tmp_path / "run", progress=False).run()
    done = len(list((tmp_path / "run" / "cells").rglob("*.json")))
    assert done >= 2  # the kill lands on the 4th call of cell(), a cached one included
    import ntkft.finetune as ft

    calls = {"n": 0}
    real_ft = ft.finetune

    def counting(*a, **k):
        calls["n"] += 1
        return real_ft(*a, **k)

    monkeypatch.setattr(ft, "finetune", counting)
    monkeypatch.setattr(val.Harness, "cell", real)
    s = val.Harness(cfg, tmp_path / "run", progress=False).run(tmp_path / "docs")
    assert calls["n"] == 9 - done
    assert set(s) >= {"candidates", "tasks", "pooled", "verdict"}
    t = s["tasks"][0]
    assert {"name", "n", "measured", "predicted", "kendall", "pearson"} <= set(t)
    assert {"entk_curve", "beta", "kta", "logme", "hscore", "params", "entk_curve_model_start"} <= set(t["predicted"])
    assert t["predicted"]["entk_curve_model_start"] == t["predicted"]["entk_curve"]  # classification: same start
    assert (tmp_path / "docs" / "README.md").read_text().splitlines()[2].startswith("**Verdict.**")
    # the constant predictor beside every measured number, and the eNTK's predicted error beside it
    assert math.isfinite(t["baseline_error"]) and set(t["predicted_error"]) == set(t["candidates"])
    assert all(m["beats_baseline"] == (m["test_error"] < m["baseline_error"]) for m in t["measured"].values())
    assert s["beats_baseline"]["16"]["of"] == 3 and "constant predictor" in s["verdict"]
    learned = 2 * len(t["beats_baseline"]) >= 3
    assert ("entk_curve" in s["pooled_where_learned"]) == (learned and "entk_curve" in t["kendall"])
    for png in ("pooled.png", "predicted_vs_measured.png"):
        assert (tmp_path / "docs" / png).read_bytes()[:4] == b"\x89PNG"
    # a rerun rewrites the generated part and keeps the hand-written one
    from ntkft.select.valreport import KEEP

    page = tmp_path / "docs" / "README.md"
    page.write_text(page.read_text() + "\n" + KEEP + "\nMy reading.\n")
    for f in (tmp_path / "run" / "cells").rglob("*.json"):  # cells of an older harness: the baseline is read back
        rec = json.loads(f.read_text())
        f.write_text(json.dumps({k: v for k, v in rec.items() if k != "baseline_error"}))
    val.Harness(cfg, tmp_path / "run", progress=False).run(tmp_path / "docs")
    assert calls["n"] == 9 - done  # nothing fine-tuned again
    text = page.read_text()
    assert text.count(KEEP) == 1 and text.rstrip().endswith("My reading.") and text.startswith("# Model selection")
    again = json.loads((tmp_path / "docs" / "summary.json").read_text())
    assert again["tasks"][0]["baseline_error"] == pytest.approx(t["baseline_error"])
    with pytest.raises(ConfigError, match="another config"):
        val.Harness(cfg.model_copy(update={"pool": 48}), tmp_path / "run", progress=False)
