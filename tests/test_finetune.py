"""Fine-tuning: the four settings on real data and a real pretrained model, early stopping, resume,
closed-form probe, the linearised model against the eNTK engine, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import killed_on_call
from ntkft.errors import ConfigError
from ntkft.finetune import EarlyStopping, FinetuneConfig, Trainer, TrainingError, finetune, probe_closed_form
from ntkft.kernel import kernel_matrix


def cfg(**kw):
    base = dict(model="tiny-bert", task="stsb", n_train=48, n_test=24, max_length=32, batch_size=8, max_steps=12,
                lr=1e-3, eval_every=3, patience=50)
    return FinetuneConfig.make(**{**base, **kw})


def test_early_stopping_semantics():
    es = EarlyStopping(patience=2, min_delta=0.1, mode="min")
    assert es.update(1.0, 1) == (True, False)
    assert es.update(0.95, 2) == (False, False)  # not better by min_delta
    assert es.update(0.5, 3) == (True, False)
    assert es.update(0.6, 4) == (False, False)
    assert es.update(0.7, 5) == (False, True) and "best at step 3" in es.reason
    mx = EarlyStopping(patience=3, mode="max")
    assert mx.update(0.2, 1)[0] and mx.update(0.3, 2)[0] and not mx.update(0.1, 3)[0]
    assert EarlyStopping().update(float("nan"), 7) == (False, True)
    with pytest.raises(ConfigError):
        EarlyStopping(mode="sideways")


@pytest.mark.parametrize("setting", ["full", "head", "probe", "linearized"])
def test_settings_run_and_write_outputs(setting, tmp_path, data_dir):
    layers = 1 if setting in ("head", "probe") else None
    res = finetune(cfg(setting=setting, layers=layers, lr=1e-2 if setting == "probe" else 1e-3,
                       optimizer="gd" if setting == "probe" else None), tmp_path,
                   progress=False)
    assert res.stopped_step == 12 and res.best_step in (0, 3, 6, 9, 12)
    assert set(res.test_best) == {"loss", "mse", "pearson", "spearman"}
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5 and "val_mse" in json.loads(lines[0]) and json.loads(lines[0])["step"] == 0
    assert (tmp_path / "model" / "model.safetensors").exists() and (tmp_path / "model" / "head.safetensors").exists()
    from transformers import AutoModel

    back = AutoModel.from_pretrained(tmp_path / "model")  # a plain Hugging Face directory
    assert back.config.num_hidden_layers == (1 if layers else 2)


def test_classification_uses_c_output_head(tmp_path, data_dir):
    res = finetune(cfg(task="rte", n_train=40, n_test=20), tmp_path, progress=False)
    assert set(res.test_best) == {"loss", "accuracy", "f1"}
    assert json.loads((tmp_path / "model" / "ntkft.json").read_text())["out_dim"] == 2


@pytest.mark.slow
def test_resume_equals_uninterrupted_minilm(tmp_path, data_dir, monkeypatch):
    c = cfg(model="minilm-l6", setting="head", layers=2, max_steps=9, eval_every=3, save_every=1)
    full = finetune(c, tmp_path / "a", progress=False)
    real = Trainer._train_step
    monkeypatch.setattr(Trainer, "_train_step", killed_on_call(real, 6))
    with pytest.raises(KeyboardInterrupt):
        finetune(c, tmp_path / "b", progress=False)
    monkeypatch.setattr(Trainer, "_train_step", real)
    (ck,) = (tmp_path / "b" / "state").glob("step-*")
    assert json.loads((ck / "trainer_state.json").read_text())["step"] == 5
    resumed = finetune(c, tmp_path / "b", progress=False)
    assert resumed.test_last == full.test_last and resumed.test_best == full.test_best
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "a" / "model" / "model.safetensors"), load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 4


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path, data_dir):
    with pytest.raises(TrainingError, match="non-finite training loss at step"):
        finetune(cfg(lr=1e30, optimizer="gd", max_steps=50, eval_every=5), tmp_path, progress=False)
    assert (tmp_path / "model" / "model.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answers")
def test_gpu_options_without_gpu(data_dir):
    with pytest.raises(ConfigError, match="bf16 is a CUDA autocast option"):
        Trainer(cfg(bf16=True), progress=False)
    with pytest.raises(ConfigError, match="no CUDA device"):
        Trainer(cfg(device="cuda"), progress=False)


def test_bad_config(data_dir):
    with pytest.raises(ConfigError, match="setting"):
        cfg(setting="sideways")
    with pytest.raises(ConfigError, match="layers: applies"):
        Trainer(cfg(setting="full", layers=1), progress=False)
    with pytest.raises(ConfigError, match=r"val: a fraction must be in \(0, 1\)"):
        cfg(val=0.0)
    with pytest.raises(Exception, match="hold-out split .* would be empty"):
        Trainer(cfg(val=0.01, n_train=20), progress=False).setup()


def test_one_class_in_train(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("text,label\n" + "".join(f"sample {i},a\n" for i in range(20)))
    spec = tmp_path / "t.yaml"
    spec.write_text(f"name: t\ntype: classification\nfiles: {{train: {f.name}}}\ntext_columns: [text]\n"
                    "label_column: label\nlabels: [a, b]\n")
    with pytest.raises(Exception, match="only one class"):
        Trainer(cfg(task=str(spec), n_train=None, n_test=None), progress=False).setup()


# ------------------------------------------------------------------ real pretrained model (MiniLM)


@pytest.mark.slow
def test_minilm_full_finetune_lowers_val_loss_and_restores_best(tmp_path, data_dir):
    c = FinetuneConfig.make(model="minilm-l6", task="stsb", setting="full", n_train=96, n_test=48, max_length=32,
                            batch_size=16, lr=1e-4, max_steps=30, eval_every=5, patience=3, drift_every=15,
                            drift_n=4)
    res = finetune(c, tmp_path, progress=False)
    first = res.history[0]["val_loss"]
    assert res.best_val < first  # training lowers validation loss
    assert res.best_val == min(h["val_loss"] for h in res.history)
    assert res.val_best["loss"] == pytest.approx(res.best_val, rel=1e-5)  # best weights restored
    if res.stopped_step < 30:
        assert "no improvement for 3 evaluations" in res.stop_reason
    assert res.drift[0]["kernel_drift"] == 0 and res.drift[-1]["param_distance"] > 0
    assert res.drift[-1]["kernel_drift"] > 0 and res.drift[-1]["linearisation_gap"] >= 0


@pytest.mark.slow
def test_minilm_closed_form_probe_matches_trained_probe(data_dir):
    ridge = 1e-2
    t = Trainer(FinetuneConfig.make(model="minilm-l6", task="stsb", setting="probe", n_train=120, n_test=60,
                                    max_length=48, optimizer="adamw", lr=1e-2, ridge=ridge, max_steps=5000,
                                    eval_every=5000, batch_size=120, standardize=False), progress=False)  # one eval: final = best
    t.fit()
    w, b = probe_closed_form(t.train.h, t.train.y, ridge)
    closed = (t.test.h.double() @ w.T + b).reshape(-1)
    trained = t.predict(t.test).double()
    assert float((closed - trained).norm() / closed.norm()) < 1e-3


@pytest.mark.slow
def test_minilm_linearized_equals_f_pt_and_its_gradient_is_the_entk_feature_map(data_dir):
    t = Trainer(FinetuneConfig.make(model="minilm-l6", task="stsb", setting="linearized", n_train=40, n_test=10,
                                    max_length=32), progress=False).setup()
    lin = t.model
    idx = torch.arange(4)
    x = {"input_ids": t.val.ids[idx], "attention_mask": t.val.mask[idx]}
    with torch.no_grad():
        f_pt = lin.base(**x)
    f0 = lin(**x)
    assert torch.allclose(f0, f_pt, atol=1e-5)
    grads = []
    for i in range(4):
        deltas = list(lin.delta.values())
        g = torch.autograd.grad(f0[i], deltas, retain_graph=True, allow_unused=True)  # BERT's pooler is unused
        grads.append(torch.cat([(v if v is not None else torch.zeros_like(d)).reshape(-1)
                                for v, d in zip(g, deltas)]).double())
    jac = torch.stack(grads)
    k = kernel_matrix(lin.base, x, progress=False)
    assert float((jac @ jac.T - k).norm() / k.norm()) < 1e-4
    assert np.isfinite(k.numpy()).all()


def test_learning_curve_writes_csv_and_figures_and_resumes(tmp_path, data_dir, monkeypatch):
    from ntkft.finetune import curve as curve_mod
    from ntkft.finetune import learning_curve

    base = cfg(max_steps=4, eval_every=2, n_test=16)
    real = curve_mod.finetune
    monkeypatch.setattr(curve_mod, "finetune", killed_on_call(real, 3))
    with pytest.raises(KeyboardInterrupt):
        learning_curve(base, ["stsb", "rte"], [16, 24], 1, tmp_path, progress=False)
    rows = (tmp_path / "curve.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 4  # header + two finished cells x (loss, mse, pearson, spearman)
    monkeypatch.setattr(curve_mod, "finetune", real)
    seen = []
    monkeypatch.setattr(curve_mod, "finetune", lambda c, *a, **k: seen.append((c.task, c.n_train)) or real(c, *a, **k))
    rows = learning_curve(base, ["stsb", "rte"], [16, 24], 1, tmp_path, progress=False)
    assert seen == [("rte", 16), ("rte", 24)]  # finished cells were not trained again
    assert {r["task"] for r in rows} == {"stsb", "rte"}
    for name in ("curve_mse.png", "curve_accuracy.png", "curve_f1.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_curve_cli(tmp_path, data_dir):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "ntkft.cli", "curve", "--model", "tiny-bert", "--tasks", "stsb",
                        "--sizes", "16,24", "--seeds", "2", "--max-steps", "2", "--eval-every", "1", "--n-test", "8",
                        "--max-length", "24", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert len((tmp_path / "curve.csv").read_text().splitlines()) == 1 + 4 * 4
    p = subprocess.run([sys.executable, "-m", "ntkft.cli", "curve", "--model", "tiny-bert", "--sizes", "a,b"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and "--sizes must be comma-separated integers" in p.stderr


def test_grad_accumulation_matches_larger_batch(data_dir):
    a = Trainer(cfg(setting="probe", optimizer="adamw", batch_size=4, grad_accum=2, max_steps=6, lr=1e-2), progress=False).fit()
    b = Trainer(cfg(setting="probe", optimizer="adamw", batch_size=8, grad_accum=1, max_steps=6, lr=1e-2), progress=False).fit()
    assert a.test_last["mse"] == pytest.approx(b.test_last["mse"], rel=1e-5)


def test_schedules_and_full_batch_gd(data_dir):
    t = Trainer(cfg(optimizer="gd", schedule="linear", warmup_steps=2, max_steps=6, lr=1e-2), progress=False).setup()
    lrs = []
    for _ in range(6):
        lrs.append(t.sched.get_last_lr()[0])
        t._train_step()
    assert lrs[0] == pytest.approx(5e-3) and lrs[1] == pytest.approx(1e-2) and lrs[5] < lrs[2]
    assert t.per_step == len(t.train.y)  # gd: every step sees the whole training set


@pytest.mark.slow
def test_minilm_early_stopping_stops_on_rising_val_loss(tmp_path, data_dir):
    res = finetune(FinetuneConfig.make(model="minilm-l6", task="stsb", setting="head", layers=2, n_train=64, n_test=32,
                                       max_length=32, batch_size=16, lr=3e-3, max_steps=200, eval_every=2,
                                       patience=3), tmp_path, progress=False)
    assert res.stopped_step < 200 and "no improvement for 3 evaluations" in res.stop_reason
    assert res.stopped_step == res.best_step + 3 * 2
    assert res.val_best["loss"] == pytest.approx(res.best_val, rel=1e-5)


def test_tensorboard_logging(tmp_path, data_dir):
    pytest.importorskip("tensorboard")
    finetune(cfg(max_steps=4, eval_every=2, tensorboard=True), tmp_path, progress=False)
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


# ------------------------------------------------------------------ run folders: atomic checkpoints, keys, reruns


@pytest.mark.parametrize("victim,nth", [("save_tensors", 5), ("save_tensors", 6), ("torch_save", 3), ("write_json", 3)])
def test_kill_inside_a_checkpoint_resumes_to_the_uninterrupted_result(victim, nth, tmp_path, data_dir, monkeypatch):
    """A kill between any two files of the third checkpoint leaves the second one whole; the rerun resumes from it."""
    from ntkft.finetune import state

    c = cfg(max_steps=6, eval_every=2, save_every=1)
    ref = finetune(c, tmp_path / "a", progress=False)
    if victim == "torch_save":
        monkeypatch.setattr(state.torch, "save", killed_on_call(torch.save, nth))
    else:
        monkeypatch.setattr(state, victim, killed_on_call(getattr(state, victim), nth))
    with pytest.raises(KeyboardInterrupt):
        finetune(c, tmp_path / "b", progress=False)
    monkeypatch.undo()
    steps = sorted(p.name for p in (tmp_path / "b" / "state").glob("step-*"))
    assert steps == ["step-0000002"]  # the interrupted step-3 checkpoint never became visible
    res = finetune(c, tmp_path / "b", progress=False)
    assert res.test_last == ref.test_last and res.test_best == ref.test_best and res.history == ref.history
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "a/model/model.safetensors"), load_file(tmp_path / "b/model/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finished_run_is_returned_without_rewriting_anything(tmp_path, data_dir):
    c = cfg(max_steps=4, eval_every=2)
    first = finetune(c, tmp_path, progress=False)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    again = finetune(c, tmp_path, progress=False)
    assert again.test_last == first.test_last and again.test_best == first.test_best
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_rerun_with_other_data_or_model_is_refused_and_overwrite_replaces_only_when_done(tmp_path, data_dir):
    from ntkft.models.zoo import load_tiny

    model_dir = tmp_path / "m"
    for seed in (0, 1):
        m = load_tiny("tiny-bert", seed=seed)
        m.backbone.save_pretrained(model_dir)
        m.tokenizer.save_pretrained(model_dir)
        if seed == 0:
            c = cfg(max_steps=2, eval_every=1, model=str(model_dir))
            finetune(c, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="different weights"):  # same path and architecture, other weights
        finetune(c, tmp_path / "run", progress=False)
    c = cfg(max_steps=2, eval_every=1)
    tmp_path = tmp_path / "run2"
    finetune(c, tmp_path, progress=False)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["kind"] == "finetune" and meta["status"] == "complete" and "weights" in meta["key"]
    with pytest.raises(ConfigError, match="different config"):
        finetune(cfg(max_steps=2, eval_every=1, lr=2e-3), tmp_path, progress=False)
    (tmp_path / "notes.txt").write_text("mine")  # a user's file in the run folder survives an overwrite
    res = finetune(cfg(max_steps=2, eval_every=1, lr=2e-3), tmp_path, progress=False, overwrite=True)
    assert res.config["lr"] == 2e-3 and (tmp_path / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".ntkft-previous-*"))  # the old run's files went once the new one was complete


def test_edited_data_file_is_a_different_run(tmp_path, data_dir):
    f = tmp_path / "t.csv"
    f.write_text("a,y\n" + "".join(f"sentence {i},{i % 5}\n" for i in range(40)))
    c = cfg(task=str(f), text_columns=["a"], label_column="y", task_type="regression", n_train=None, n_test=None,
            max_steps=2, eval_every=1)
    finetune(c, tmp_path / "run", progress=False)
    f.write_text("a,y\n" + "".join(f"sentence {i},{(i + 1) % 5}\n" for i in range(40)))  # labels edited
    with pytest.raises(ConfigError, match="different data"):
        finetune(c, tmp_path / "run", progress=False)


def test_per_setting_default_learning_rates():
    from ntkft.finetune import DEFAULT_LR

    probe = FinetuneConfig.make(setting="probe")
    assert probe.optimizer == "ridge" and probe.lr is None and probe.max_steps == 1  # closed form (finetune/ridge.py)
    gd = FinetuneConfig.make(setting="probe", optimizer="gd")
    assert gd.lr is None and gd.max_steps == 1000  # step from the features
    assert FinetuneConfig.make(setting="probe", optimizer="adamw").lr == DEFAULT_LR[("probe", "adamw")]
    assert FinetuneConfig.make(setting="full", optimizer="gd").lr == DEFAULT_LR[("full", "gd")]
    assert FinetuneConfig.make(setting="probe", optimizer="gd", lr=1e-3).lr == 1e-3
    with pytest.raises(ConfigError, match="lr: optimizer ridge"):
        FinetuneConfig.make(setting="probe", lr=1e-3)


def test_warning_when_max_steps_ends_a_run_that_still_improves(data_dir):
    res = Trainer(cfg(setting="probe", optimizer="gd", layers=1, max_steps=6, eval_every=2, lr=1e-3), progress=False).fit()
    assert res.stop_reason == "reached max_steps=6"
    assert (res.best_step == 6) == any("still improving" in w for w in res.warnings)


def test_head_starts_at_the_training_mean_and_step_0_competes(data_dir):
    """f starts at the training mean (the bias absorbs the random head's offset); a run whose every step makes
    things worse keeps the starting model, and says when the kept model loses to the training mean."""
    t = Trainer(cfg(setting="full", lr=0.5, max_steps=6, eval_every=2, patience=2), progress=False).setup()
    assert float(t.predict(t.train).double().mean()) == pytest.approx(float(t.train.y.double().mean()), abs=1e-4)
    start = t.evaluate(t.val)
    res = t.fit()
    assert res.history[0]["step"] == 0 and res.history[0]["train_loss"] is None
    assert res.best_step == 0 and res.val_best["loss"] == pytest.approx(start["loss"], rel=1e-6)
    assert res.best_val == pytest.approx(start["loss"], rel=1e-6) and res.stopped_step == 4
    const = float(((t.val.y.double() - t.train.y.double().mean()) ** 2).mean()) / t.scale ** 2
    assert (start["loss"] > const) == any("worse than predicting the training mean" in w for w in res.warnings)
    off = Trainer(cfg(setting="full", lr=0.5, max_steps=6, eval_every=2, eval_at_start=False), progress=False).fit()
    assert off.history[0]["step"] == 2 and off.best_step > 0


@pytest.mark.slow
def test_minilm_probe_with_default_settings_beats_predicting_the_mean(tmp_path, data_dir):
    """The shipped defaults must give a sane probe: better than the constant predictor (R^2 > 0)."""
    res = finetune(FinetuneConfig.make(model="minilm-l6", task="stsb", setting="probe", n_train=2000, n_test=300),
                   tmp_path, progress=False)
    from ntkft.tasks import load_task, subsample

    train_mean = float(np.mean(subsample(load_task("stsb", "train"), 2000, seed=0).labels))
    y = subsample(load_task("stsb", "test"), 300, seed=0).labels
    assert res.test_best["mse"] < float(np.mean((y - train_mean) ** 2)) and res.test_best["pearson"] > 0.3


@pytest.mark.parametrize("setting", ["full", "linearized"])
def test_standardised_regression_starts_at_the_mean_and_saves_in_target_units(setting, tmp_path, data_dir):
    """standardize: f starts at mean(y) over the training inputs (the bias absorbs the head's offset); the loss is
    in training units, metrics and the saved model in the targets' units; off: the theory's N(0, sigma^2) bias on
    raw targets."""
    on = Trainer(cfg(setting=setting), tmp_path / "on", progress=False).setup()
    off = Trainer(cfg(setting=setting, standardize=False), progress=False).setup()
    y = on.train.y.double()
    assert float(on.predict(on.train).double().mean()) == pytest.approx(float(y.mean()), abs=1e-4 * on.scale)
    assert on.model.head.bias.item() != off.model.head.bias.item()
    assert torch.equal(on.model.head.weight, off.model.head.weight)
    assert on.shift == pytest.approx(float(y.mean())) and on.scale == pytest.approx(float(y.std(unbiased=False)))
    ev = on.evaluate(on.train)
    assert ev["loss"] == pytest.approx(ev["mse"] / on.scale ** 2, rel=1e-5)
    assert ev["mse"] < off.evaluate(off.train)["mse"]
    res = on.fit()
    from ntkft.models.checkpoint import load_finetuned

    _, back, _ = load_finetuned(tmp_path / "on" / "model")
    test = on.test
    with torch.no_grad():
        f = back(test.ids, test.mask).reshape(-1)
    tol = 1e-4 if setting == "full" else 1e-2  # linearized saves theta_PT + delta, a nonlinear model near f_lin
    torch.testing.assert_close(f.float(), on.predict(test).reshape(-1), rtol=tol, atol=tol * on.scale)
    assert res.test_best["mse"] == pytest.approx(float(((on.predict(test) - test.y) ** 2).mean()), rel=1e-4)
    rte = Trainer(cfg(task="rte", n_train=40, n_test=20), progress=False).setup()  # classification: untouched
    assert (rte.shift, rte.scale) == (0.0, 1.0)


def test_classification_head_starts_at_the_log_class_prior(data_dir):
    """start_at_prior: the mean initial logits over the training rows are the (smoothed) log class prior, so step 0
    is the constant predictor on average, not the random head's argmax; off: the theory's N(0, sigma^2) bias."""
    t = Trainer(cfg(task="mrpc", n_train=40, n_test=20), progress=False).setup()
    counts = torch.bincount(t.train.y.long(), minlength=2).double() + 0.5
    torch.testing.assert_close(t.predict(t.train).double().mean(0), (counts / counts.sum()).log(), rtol=0, atol=1e-5)
    off = Trainer(cfg(task="mrpc", n_train=40, n_test=20, start_at_prior=False), progress=False).setup()
    assert torch.equal(off.model.head.weight, t.model.head.weight)
    assert not torch.allclose(off.predict(off.train).double().mean(0), (counts / counts.sum()).log(), atol=1e-3)


@pytest.mark.parametrize("task", ["stsb", "rte"])
def test_center_output_starts_every_row_at_the_constant_predictor_with_unchanged_gradients(task, data_dir):
    """center_output: f = g - g_0 + c is the constant predictor on every row at step 0 (the training mean; the log
    class prior, so the majority class everywhere), and its gradients are g's: the eNTK is unchanged."""
    kw = {"task": task, "n_train": 40, "n_test": 20} if task == "rte" else {}
    on = Trainer(cfg(center_output=True, save_model=False, **kw), progress=False).setup()
    plain = Trainer(cfg(standardize=False, start_at_prior=False, **kw), progress=False).setup()  # the same random head
    assert torch.equal(on.model.head.bias, plain.model.head.bias)
    y = on.train.y
    for split in (on.train, on.val, on.test):
        p = on.predict(split).double()
        assert bool((p == p[0]).all())  # one value for every row, bit for bit (ties in c stay ties)
        if task == "stsb":
            torch.testing.assert_close(p, torch.full_like(p, float(y.double().mean())), rtol=0, atol=1e-5 * on.scale)
        else:
            counts = torch.bincount(y.long(), minlength=2).double() + 0.5
            torch.testing.assert_close(p, (counts / counts.sum()).log().expand_as(p), rtol=0, atol=1e-5)
            assert bool((p.argmax(1) == int(counts.argmax())).all())
    start = on.evaluate(on.val)  # remembered at construction, from c: the same as a forward pass gives
    assert json.dumps(start) == json.dumps(on._evaluate(on.val))  # (as text: a constant's correlation is NaN)
    if task == "stsb":
        assert start["mse"] == pytest.approx(float(((on.val.y.double() - y.double().mean()) ** 2).mean()), rel=1e-4)
    else:
        assert start["accuracy"] == pytest.approx(float((on.val.y == int(torch.bincount(y).argmax())).double().mean()))
    grads = []
    for t in (on, plain):
        t.model.eval()
        t.model.zero_grad()
        t._forward(t.train, torch.arange(6)).sum().backward()
        grads.append({n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in t.params.items()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7)
    assert on.fit().history[0]["val_loss"] == pytest.approx(start["loss"], rel=1e-6)


def test_center_output_cannot_be_saved_as_one_model(tmp_path, capsys):
    with pytest.raises(ConfigError, match="center_output"):
        cfg(center_output=True)
    from conftest import run_cli

    code, _, err = run_cli(["finetune", "--model", "tiny-bert", "--center-output", "--out", str(tmp_path / "x")],
                           capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("ntkft: error")]
    assert code == 2 and len(lines) == 1 and "--center-output" in lines[0] and "--no-save-model" in lines[0]
    assert "Traceback" not in err


def test_length_batches_predict_as_row_by_row_and_final_evaluations_are_reused(data_dir, monkeypatch):
    """predict batches rows of similar length (less padding): the same outputs as one row at a time, in row order;
    the final report reuses the evaluations made at the best and last steps instead of a second pass."""
    t = Trainer(cfg(eval_every=3, max_steps=9), progress=False).setup()
    got = t.predict(t.test)
    t.model.eval()
    with torch.no_grad():
        one = torch.cat([t._forward(t.test, torch.tensor([i])) for i in range(len(t.test))]) * t.scale + t.shift
    torch.testing.assert_close(got, one, rtol=1e-5, atol=1e-5)
    calls = []
    real = t._evaluate
    monkeypatch.setattr(t, "_evaluate", lambda split: calls.append(split) or real(split))
    res = t.fit()
    n_val = sum(1 for s in calls if s is t.val)
    assert n_val == len(res.history)  # one per evaluation; the final val_best is the best step's
    assert sum(1 for s in calls if s is t.test) == (1 if res.best_step == res.stopped_step else 2)
    best = next(r for r in res.history if r["step"] == res.best_step)
    assert res.val_best["loss"] == best["val_loss"]
    fresh = Trainer(cfg(eval_every=3, max_steps=9), progress=False).fit()  # the same run without the early calls
    assert fresh.val_best == res.val_best and fresh.test_best == res.test_best and fresh.test_last == res.test_last


def test_length_split_partitions_a_batch_and_keeps_its_gradient(data_dir):
    from ntkft.finetune.data import length_split

    mask = torch.zeros(16, 30, dtype=torch.long)
    for i, n in enumerate([3, 28, 4, 30, 2, 29, 5, 27, 3, 30, 4, 28, 2, 29, 6, 30]):
        mask[i, :n] = 1
    parts = length_split(torch.arange(16), mask)
    assert len(parts) == 2 and sorted(torch.cat(parts).tolist()) == list(range(16))
    assert int(mask[parts[0]].sum(1).max()) <= int(mask[parts[1]].sum(1).min())
    assert length_split(torch.arange(8), torch.ones(8, 30, dtype=torch.long))[0].tolist() == list(range(8))
    t = Trainer(cfg(), progress=False).setup()
    lens = t.train.mask.sum(1)
    order = torch.argsort(lens, stable=True)
    idx = torch.cat([order[:6], order[-6:]])
    parts = length_split(idx, t.train.mask)
    assert len(parts) == 2
    t.model.eval()
    grads = []
    for chunks in ([idx], parts):
        t.model.zero_grad()
        for ch in chunks:
            loss = ((t._forward(t.train, ch) - t._target(t.train.y[ch])) ** 2).mean() * len(ch) / len(idx)
            loss.backward()
        grads.append({n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in t.params.items()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6)
