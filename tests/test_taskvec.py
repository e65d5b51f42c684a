"""Task vectors on tiny models: algebra, mergekit agreement, written models, heads, streaming memory, errors, and the
commands (add / negate / disentangle / orthogonality / cosine) on real task rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import run_cli
from ntkft.config import make
from ntkft.errors import ConfigError, ModelError
from ntkft.models.checkpoint import load_finetuned, save_finetuned
from ntkft.pipeline import build_readout
from ntkft.taskvec import (
    AddConfig,
    DisentangleConfig,
    NegateConfig,
    Pretrained,
    ShardWriter,
    TaskVector,
    add,
    cosine_matrix,
    negate,
    run_add,
    run_disentangle,
    run_negate,
    task_vectors,
    write_merged,
)
from ntkft.taskvec.measures import cross_ratio, linearised_vs_merged

TASKS = ("rte", "mrpc", "cr")


def _perturb(module: torch.nn.Module, seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A tiny pretrained BERT on disk and three 'fine-tuned' copies (perturbed backbones, task heads)."""
    root = tmp_path_factory.mktemp("tv")
    loaded, r = build_readout("tiny-bert", out_dim=1, seed=0)
    r.backbone.save_pretrained(root / "pt", safe_serialization=True)
    loaded.tokenizer.save_pretrained(root / "pt")
    for i, task in enumerate(TASKS):
        ld, ft = build_readout(str(root / "pt"), out_dim=2, seed=10 + i)
        _perturb(ft.backbone, 100 + i, 0.02)
        save_finetuned(ft, ld.tokenizer, root / task, {"task": task, "setting": "full", "base_model": str(root / "pt")})
    return root


def _files(d) -> dict[str, torch.Tensor]:
    return load_file(str(d / "model.safetensors"))


# ---------------------------------------------------------------- algebra


def test_algebra_identities(zoo):
    t1, t2 = task_vectors(str(zoo / "pt"), [zoo / "rte", zoo / "mrpc"])
    pt, ft = _files(zoo / "pt"), _files(zoo / "rte")
    same = t1 + t2 - t2
    assert same.name == "rte"
    for (n, a), (m, b) in zip(same.items(), t1.items()):
        assert n == m and torch.equal(a, b)
    for n, tau in t1.items():
        assert torch.equal(tau, ft[n] - pt[n])
    assert t1.cosine(t1) == pytest.approx(1.0, abs=1e-12)
    assert (-t1).cosine(t1) == pytest.approx(-1.0, abs=1e-12)
    naive = sum(float((ft[n].double() - pt[n].double()).pow(2).sum()) for n in pt if pt[n].is_floating_point())
    assert t1.norm() ** 2 == pytest.approx(naive, rel=1e-6)
    assert t1.dot(t2) == pytest.approx(t2.dot(t1), rel=1e-12)
    assert (2 * t1).norm() == pytest.approx(2 * t1.norm(), rel=1e-12)
    assert (t1 * 0.5).state_dict().keys() == (0.5 * t1).state_dict().keys()
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip((t1 * 0.5).items(), (0.5 * t1).items()))
    s = sum([t1, t2])
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(s.items(), (t1 + t2).items()))
    assert (t1 - t1).numel == 0 and (t1 - t1).norm() == 0.0
    c = cosine_matrix([t1, t2], progress=False)
    assert c.shape == (2, 2) and c[0, 1] == pytest.approx(t1.cosine(t2), abs=1e-12)


def test_lambda_zero_and_negation_exact(zoo, tmp_path):
    (t1,) = task_vectors(str(zoo / "pt"), [zoo / "rte"])
    pt, ft = _files(zoo / "pt"), _files(zoo / "rte")
    add([t1, *task_vectors(t1.base, [zoo / "mrpc"])], 0.0, tmp_path / "zero", progress=False)
    got = _files(tmp_path / "zero")
    assert got.keys() == pt.keys() and all(torch.equal(got[n], pt[n]) for n in pt)
    negate(t1, 1.0, tmp_path / "neg", progress=False)
    got = _files(tmp_path / "neg")
    assert all(torch.equal(got[n], pt[n] - (ft[n] - pt[n])) for n in pt if pt[n].is_floating_point())


def test_addition_matches_mergekit_task_arithmetic(zoo, tmp_path):
    mk = pytest.importorskip("mergekit.merge_methods")
    t1, t2 = task_vectors(str(zoo / "pt"), [zoo / "rte", zoo / "mrpc"])
    add([t1, t2], 0.35, tmp_path / "m", progress=False)
    pt, f1, f2 = _files(zoo / "pt"), _files(zoo / "rte"), _files(zoo / "mrpc")
    ref = mk.merge_state_dicts({"base": pt, "a": f1, "b": f2}, "task_arithmetic", base="base",
                               parameters={"lambda": 0.35, "weight": 1.0, "normalize": False})
    mine = _files(tmp_path / "m")
    assert mine.keys() == ref.keys()
    assert max(float((mine[n].double() - ref[n].double()).abs().max()) for n in ref) <= 1e-7


def test_written_model_loads_with_each_head(zoo, tmp_path):
    from transformers import AutoModel

    t1, t2 = task_vectors(str(zoo / "pt"), [zoo / "rte", zoo / "mrpc"])
    out = add([t1, t2], 0.5, tmp_path / "m", progress=False)
    backbone = AutoModel.from_pretrained(out)
    pt = _files(zoo / "pt")
    expect = {n: pt[n] + (t1 + t2).tensor(n) * 0.5 for n in (t1 + t2).names()}
    sd = backbone.state_dict()
    assert all(torch.allclose(sd[n], expect[n], rtol=0, atol=0) for n in expect)
    info = json.loads((out / "ntkft.json").read_text())
    assert set(info["heads"]) == {"rte", "mrpc"} and info["lambda"] == 0.5
    for task in ("rte", "mrpc"):
        _, r, got = load_finetuned(out, head=task)
        _, ft, _ = load_finetuned(zoo / task)
        torch.testing.assert_close(r.head.weight, ft.head.weight, rtol=0, atol=0)
        assert got["head_of"] == task
    with pytest.raises(ModelError, match="choose one"):
        load_finetuned(out)


def test_extra_tensors_stay_with_their_task(zoo, tmp_path):
    import shutil

    ft = tmp_path / "rte_extra"
    shutil.copytree(zoo / "rte", ft)
    sd = _files(ft)
    sd["adapter.weight"] = torch.ones(3, 4)
    save_file(sd, str(ft / "model.safetensors"), metadata={"format": "pt"})
    t1, t2 = task_vectors(str(zoo / "pt"), [f"rte={ft}", zoo / "mrpc"])
    rep = (t1 + t2).report()
    assert rep["terms"][0]["extra_tensors"] == ["adapter.weight"] and rep["terms"][1]["extra_tensors"] == []
    out = add([t1, t2], 1.0, tmp_path / "m", progress=False)
    assert "adapter.weight" not in _files(out)
    kept = load_file(str(out / "heads" / "rte" / "extra.safetensors"))
    assert torch.equal(kept["adapter.weight"], torch.ones(3, 4))


def test_sharded_checkpoints_read_and_written(zoo, tmp_path):
    from transformers import AutoModel

    _, ft = build_readout(str(zoo / "rte"), out_dim=1)
    ft.backbone.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="300KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    (a,) = task_vectors(str(zoo / "pt"), [zoo / "rte"])
    (b,) = task_vectors(a.base, [f"rte={tmp_path / 'sharded'}"])
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a.items(), b.items()))
    out = write_merged(b, 0.7, tmp_path / "m", max_shard_bytes=200_000, progress=False)
    idx = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(idx["weight_map"].values())) > 2
    sd = AutoModel.from_pretrained(out).state_dict()
    pt = _files(zoo / "pt")
    assert all(torch.equal(sd[n], pt[n] + b.tensor(n) * 0.7) for n in b.names())


def test_streaming_merge_peak_memory_below_one_model(tmp_path):
    """Three sharded 'models' of 96 MB: merging them holds a few tensors at a time, not a shard and not a model
    (anonymous RSS, sampled every 2 ms: VmHWM also counts the mmapped shards' pages, which are reclaimable page
    cache). Streamed: +20 MiB (five 4 MiB tensors); buffering each 8 MiB shard, as the writer once did: +28 MiB."""
    names = [f"layer.{i}.weight" for i in range(24)]
    g = torch.Generator().manual_seed(0)
    size = 0
    for d, scale in (("pt", 0.0), ("a", 0.01), ("b", 0.02)):
        (tmp_path / d).mkdir()
        (tmp_path / d / "config.json").write_text(json.dumps({"model_type": "bert"}))
        wmap = {}
        for s in range(4):
            shard = {}
            for n in names[6 * s:6 * s + 6]:
                gg = torch.Generator().manual_seed(names.index(n))
                shard[n] = torch.randn(1 << 20, generator=gg) + scale * torch.randn(1 << 20, generator=g)
                wmap[n] = f"model-{s + 1:05d}-of-00004.safetensors"
            save_file(shard, str(tmp_path / d / f"model-{s + 1:05d}-of-00004.safetensors"), metadata={"format": "pt"})
        (tmp_path / d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
        size = 24 * 4 * (1 << 20)
    script = textwrap.dedent(f"""
        import json, pathlib
        from ntkft.taskvec import task_vectors, add
        root = pathlib.Path({str(tmp_path)!r})
        vs = task_vectors(str(root / "pt"), [f"a={{root / 'a'}}", f"b={{root / 'b'}}"])
        import threading, time
        def anon():  # anonymous memory: what the merge holds (mapped file pages are page cache, reclaimable)
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        before, peak, done = anon(), [0], threading.Event()
        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], anon())
                time.sleep(0.002)
        w = threading.Thread(target=watch, daemon=True)
        w.start()
        add(vs, 0.5, root / "merged", max_shard_bytes=8 << 20, progress=False)
        done.set()
        w.join()
        print(json.dumps({{"before": before, "peak": max(peak[0], anon())}}))
    """)
    # glibc keeps freed multi-MB blocks on its heap once its mmap threshold has risen, so RSS would count memory
    # the merge already gave back (seen: +20 to +72 MiB for the same run); a fixed threshold returns every freed
    # block >= 1 MiB at once, and anonymous RSS is then what the merge holds.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mem = json.loads(proc.stdout.strip().splitlines()[-1])
    grew = mem["peak"] - mem["before"]
    assert grew < 0.25 * size, f"peak grew by {grew / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB model"
    merged = load_file(str(tmp_path / "merged" / "model-00001-of-00012.safetensors"))
    pt, a, b = (load_file(str(tmp_path / d / "model-00001-of-00004.safetensors")) for d in ("pt", "a", "b"))
    n = next(iter(merged))
    torch.testing.assert_close(merged[n], pt[n] + 0.5 * ((a[n] - pt[n]) + (b[n] - pt[n])), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- errors


def test_mismatches_are_one_line_errors_naming_the_tensor(zoo, tmp_path):
    import shutil

    base = Pretrained.open(str(zoo / "pt"))
    for change, what in ((lambda t: t[:-1], "shape"), (lambda t: t.half(), "float16")):
        d = tmp_path / what
        shutil.copytree(zoo / "rte", d)
        sd = _files(d)
        sd["pooler.dense.bias"] = change(sd["pooler.dense.bias"])
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(ModelError) as e:
            TaskVector.from_checkpoint(base, d)
        assert "pooler.dense.bias" in str(e.value) and what in str(e.value) and "\n" not in str(e.value)
    ld, other = build_readout("tiny-gpt2", out_dim=2)
    save_finetuned(other, ld.tokenizer, tmp_path / "gpt2", {"task": "rte"})
    with pytest.raises(ModelError, match="one architecture"):
        TaskVector.from_checkpoint(base, tmp_path / "gpt2")
    with pytest.raises(ModelError, match="no such checkpoint"):
        TaskVector.from_checkpoint(base, tmp_path / "nope")
    with pytest.raises(ConfigError, match="lambdas"):
        make(AddConfig, pretrained="x", finetuned=["a", "b"], lambdas=[0.5, 2.5])
    with pytest.raises(ConfigError, match="finetuned"):
        make(AddConfig, pretrained="x", finetuned=["a"])
    with pytest.raises(ConfigError, match="twice"):
        task_vectors(base, [zoo / "rte", zoo / "rte"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ntkft.cli", "taskvec", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_bad_input_exit_2_one_line(zoo, tmp_path, capsys):
    ld, other = build_readout("tiny-gpt2", out_dim=2)
    save_finetuned(other, ld.tokenizer, tmp_path / "gpt2", {"task": "rte"})
    pt = str(zoo / "pt")
    cases = [(["cosine", "--pretrained", pt, "--finetuned", f"{zoo / 'rte'},{tmp_path / 'gpt2'}"], "architecture"),
             (["cosine", "--pretrained", pt, "--finetuned", f"{zoo / 'rte'},{tmp_path / 'missing'}"], "no such"),
             (["add", "--pretrained", pt, "--finetuned", f"{zoo / 'rte'},{zoo / 'mrpc'}", "--lambdas", "0,3"],
              "--lambdas"),
             (["add", "--pretrained", pt, "--finetuned", str(zoo / "rte")], "--finetuned")]
    for args, needle in cases:  # in-process (the exit code and stderr of `main`); process level: test_cli.py
        code, _, err = run_cli(["taskvec", *args, "--out", str(tmp_path / "out")], capsys)
        lines = [x for x in err.splitlines() if x.strip()]
        assert code == 2, err[-1500:]
        assert lines and lines[-1].startswith("ntkft: error:") and needle in lines[-1], err[-1500:]
        assert "Traceback" not in err


def test_cli_cosine_writes_run_folder(zoo, tmp_path):
    out = tmp_path / "cos"
    p = _cli("cosine", "--pretrained", str(zoo / "pt"), "--finetuned",
             ",".join(str(zoo / t) for t in TASKS), "--out", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    for f in ("cosine.json", "cosine.csv", "cosine.png", "meta.json"):
        assert (out / f).is_file()
    res = json.loads((out / "cosine.json").read_text())
    assert res["names"] == list(TASKS)
    assert all(res["matrix"][i][i] == pytest.approx(1.0) for i in range(3))
    assert json.loads((out / "meta.json").read_text())["status"] == "complete"


# ---------------------------------------------------------------- the commands on real task rows


def _common(zoo) -> dict:
    return {"pretrained": str(zoo / "pt"), "n_val": 16, "n_test": 24, "max_length": 32, "batch_size": 32}


def test_add_resumes_from_cached_evaluations(zoo, tmp_path, monkeypatch):
    cfg = make(AddConfig, finetuned=[str(zoo / "rte"), str(zoo / "mrpc")], lambdas=[0.0, 0.5, 1.0], n_linear=8,
               **_common(zoo))
    res = run_add(cfg, tmp_path / "run", progress=False)
    assert res.best_lambda in (0.0, 0.5, 1.0) and set(res.test) == {"rte", "mrpc"}
    for v in res.test.values():
        assert v["normalised"] == pytest.approx(v["merged"] / v["finetuned"])
    assert res.mean_normalised == pytest.approx(sum(v["normalised"] for v in res.test.values()) / 2)
    assert len(res.val) == 3 and all("mean_normalised" in r for r in res.val)
    assert set(res.linearised) == {"rte", "mrpc"}
    for f in ("addition.json", "addition.csv", "lambda_grid.csv", "lambda_grid.png", "addition.png", "merged/ntkft.json"):
        assert (tmp_path / "run" / f).is_file()
    from ntkft.taskvec.evaluate import Session

    monkeypatch.setattr(Session, "evaluate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("re-evaluated")))
    again = run_add(cfg, tmp_path / "run", progress=False)
    assert again.val == res.val and again.test == res.test
    other = make(AddConfig, finetuned=[str(zoo / "rte"), str(zoo / "mrpc")], lambdas=[0.0, 1.0], **_common(zoo))
    with pytest.raises(ConfigError, match="overwrite"):
        run_add(other, tmp_path / "run", progress=False)


def test_negate_chooses_lambda_within_the_control_threshold(zoo, tmp_path):
    cfg = make(NegateConfig, target=str(zoo / "rte"), control=str(zoo / "mrpc"), lambdas=[0.0, 0.5, 1.0],
               threshold=0.9, save_model=False, **_common(zoo))
    res = run_negate(cfg, tmp_path / "neg", progress=False)
    rows = {r["lambda"]: r for r in res.val}
    assert rows[0.0]["control_kept"] == pytest.approx(1.0)
    assert rows[res.best_lambda]["allowed"]
    allowed = [r for r in res.val if r["allowed"]]
    assert rows[res.best_lambda]["target"] == min(r["target"] for r in allowed)
    g = res.negation_gap
    assert g["gap"] == pytest.approx(g["negated"] - g["finetuned"]) and g["error"] == "error_rate"
    probe = make(NegateConfig, target=str(zoo / "rte"), control="cr", lambdas=[0.0, 1.0], n_probe=32,
                 save_model=False, **_common(zoo))
    res2 = run_negate(probe, None, progress=False)
    assert res2.control == "cr" and "probe" in res2.notes[0]


def test_disentanglement_grid(zoo, tmp_path):
    cfg = make(DisentangleConfig, finetuned=[str(zoo / "rte"), str(zoo / "mrpc")], coefficients=[0.0, 1.0, 2.0],
               n=16, pretrained=str(zoo / "pt"), max_length=32)
    res = run_disentangle(cfg, tmp_path / "dis", progress=False)
    assert res.xi[0][0] == 0.0  # theta_PT on both sides
    for k in range(3):
        assert res.parts["rte"][k][0] == 0.0  # a2 = 0: the merged model is task 1's own
        assert res.parts["mrpc"][0][k] == 0.0
    assert all(0.0 <= v <= 2.0 for row in res.xi for v in row)
    assert (tmp_path / "dis" / "disentangle.png").is_file() and (tmp_path / "dis" / "disentangle.csv").is_file()


def test_experiment_figure3_and_orthogonality_table(zoo, tmp_path):
    from ntkft.taskvec import experiment

    rep = experiment(str(zoo / "pt"), {t: zoo / t for t in TASKS}, out=tmp_path / "fig3", lambdas=[0.5, 1.0],
                     n_val=8, n_test=8, n_kernel=4, n_linear=0, max_length=16, progress=False)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["cosine"]["names"] == list(TASKS) and len(d["cosine"]["matrix"]) == 3
    assert set(d["addition"]["test"]) == set(TASKS) and d["addition"]["best_lambda"] in (0.5, 1.0)
    rows = rep.orthogonality.rows
    assert [(r["task_a"], r["task_b"]) for r in rows] == [("rte", "mrpc"), ("rte", "cr"), ("mrpc", "cr")]
    for r in rows:
        assert 0.0 < r["kernel_ratio"] <= 1.0 + 1e-9 and 0.0 <= r["kernel_ratio_centred"] <= 1.0 + 1e-9
        i, j = TASKS.index(r["task_a"]), TASKS.index(r["task_b"])
        assert r["cosine"] == pytest.approx(d["cosine"]["matrix"][i][j], abs=1e-9)
        assert "normalised_accuracy" in r and r["lambda"] in (0.5, 1.0)
    assert set(rep.orthogonality.spearman) == {"kernel_ratio_vs_accuracy", "kernel_ratio_centred_vs_accuracy",
                                               "cosine_vs_accuracy"}
    for sub in ("cosine", "add", "orthogonality"):
        assert json.loads((tmp_path / "fig3" / sub / "meta.json").read_text())["status"] == "complete"
    assert (tmp_path / "fig3" / "orthogonality" / "orthogonality.csv").read_text().count("\n") == 4


def test_cross_ratio_closed_forms():
    x = torch.randn(5, 7, dtype=torch.float64)
    k = x @ x.T
    assert cross_ratio(k, k, k) == pytest.approx(1.0)
    y = torch.zeros(4, 9, dtype=torch.float64)
    y[:, 7:] = torch.randn(4, 2, dtype=torch.float64)
    xx = torch.cat([x, torch.zeros(5, 2, dtype=torch.float64)], 1)
    assert cross_ratio(xx @ y.T, xx @ xx.T, y @ y.T) == 0.0  # disjoint gradient supports: orthogonal tasks


def test_linearised_prediction_first_order(zoo):
    from ntkft.taskvec.evaluate import Session

    t1, t2 = task_vectors(str(zoo / "pt"), [zoo / "rte", zoo / "mrpc"])
    s = Session(t1.base, max_length=32, batch_size=16)
    t = s.task(t1.checkpoints[0], 4, 16)
    small = linearised_vs_merged(s, t1 + t2, 0.01, t, t.test)
    large = linearised_vs_merged(s, t1 + t2, 1.0, t, t.test)
    assert small["rel_error"] < 0.05 and small["rel_error"] < large["rel_error"]


def test_causal_lm_layout_of_a_decoder_aligns(tmp_path):
    """A decoder whose pretrained folder is a causal LM ('model.layers...') and whose fine-tuned backbone is the bare
    model ('layers...'), as with SmolLM2: names align, the merge loads as a causal LM and lambda = 1 gives f_FT."""
    from transformers import AutoModelForCausalLM

    from ntkft.models import load_model
    from ntkft.taskvec.evaluate import Session

    tiny = load_model("tiny-llama")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny.backbone.config).save_pretrained(tmp_path / "pt")
    tiny.tokenizer.save_pretrained(tmp_path / "pt")
    ld, ft = build_readout(str(tmp_path / "pt"), out_dim=2, seed=3)
    _perturb(ft.backbone, 7, 0.02)
    save_finetuned(ft, ld.tokenizer, tmp_path / "ft", {"task": "rte"})
    (tv,) = task_vectors(str(tmp_path / "pt"), [tmp_path / "ft"])
    ck = tv.checkpoints[0]
    assert all(b.startswith("model.") for b in ck.from_base) and not ck.extra and not ck.missing
    out = write_merged(tv, 1.0, tmp_path / "m", progress=False)
    lm = AutoModelForCausalLM.from_pretrained(out)
    sd = ft.backbone.state_dict()
    for n, p in lm.model.state_dict().items():
        torch.testing.assert_close(p, sd[n], rtol=0, atol=1e-6)
    s = Session(tv.base, kind="decoder", max_length=24, batch_size=8)
    s.set_weights(tv, 1.0)
    ids = torch.randint(1000, 2000, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with torch.no_grad():
        torch.testing.assert_close(s.readout(ck.head)(ids, mask), ft(ids, mask), rtol=0, atol=1e-5)


def test_shard_writer_streams_every_dtype_and_rejects_an_unplanned_tensor(tmp_path):
    """The hand-written safetensors headers read back with safetensors itself: dtypes, a scalar, an empty
    tensor, shard boundaries and the index; a tensor out of layout order, or one never written, is an error."""
    ts = {"w": torch.randn(3, 4), "s": torch.tensor(1.5, dtype=torch.bfloat16), "e": torch.zeros(0, dtype=torch.int64),
          "m": torch.tensor([True, False, True]), "h": torch.randn(7, dtype=torch.float16), "i": torch.arange(5)}
    layout = [(n, tuple(t.shape), t.dtype) for n, t in ts.items()]
    (tmp_path / "a").mkdir()
    w = ShardWriter(tmp_path / "a", layout, max_bytes=40)
    for n, t in ts.items():
        w.add(n, t)
    files = w.close()
    assert files[-1] == "model.safetensors.index.json" and len(files) > 3
    wmap = json.loads((tmp_path / "a" / files[-1]).read_text())["weight_map"]
    for n, t in ts.items():
        got = load_file(str(tmp_path / "a" / wmap[n]))[n]
        assert got.dtype == t.dtype and torch.equal(got, t)
    (tmp_path / "b").mkdir()
    one = ShardWriter(tmp_path / "b", layout)
    for n, t in ts.items():
        one.add(n, t)
    assert one.close() == ["model.safetensors"] and set(load_file(str(tmp_path / "b" / "model.safetensors"))) == set(ts)
    (tmp_path / "c").mkdir()
    bad = ShardWriter(tmp_path / "c", layout)
    with pytest.raises(ModelError, match="layout expects 'w'"):
        bad.add("s", ts["s"])
    bad.add("w", ts["w"])
    with pytest.raises(ModelError, match="never written"):
        bad.close()
