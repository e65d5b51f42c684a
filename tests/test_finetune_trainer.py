"""The Trainer's shape: a constructor without I/O, callbacks for everything around the loop, the Setting registry,
and the constant predictor beside every fine-tuning score (tiny-bert, real task rows)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import killed_on_call, run_cli
from ntkft.finetune import Callback, FinetuneConfig, Trainer, finetune


def cfg(**kw):
    base = dict(model="tiny-bert", task="stsb", n_train=40, n_test=24, max_length=24, batch_size=8, max_steps=4,
                lr=1e-3, eval_every=2, patience=50)
    return FinetuneConfig.make(**{**base, **kw})


def test_constructor_does_no_io_and_bad_data_fails_before_any_folder(tmp_path, monkeypatch, data_dir):
    from ntkft.finetune import predictor

    def no_loading(*a, **k):
        raise AssertionError("the constructor loaded a model")

    monkeypatch.setattr(predictor, "load_model", no_loading)
    t = Trainer(cfg(val=0.01, n_train=20), tmp_path / "run", progress=False)  # a hold-out split of 0 rows
    assert not t.ready and not (tmp_path / "run").exists()
    monkeypatch.undo()
    with pytest.raises(Exception, match="hold-out split .* would be empty"):
        t.fit()
    assert not (tmp_path / "run").exists()  # reported before the run folder was claimed


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.logged: list[dict] = []

    def on_train_begin(self, tr):
        self.events.append("begin")

    def on_step_end(self, tr, loss):
        self.events.append("step")

    def on_evaluate(self, tr, record):
        record["extra"] = tr.step  # a callback may add to the record before it is logged

    def on_log(self, tr, record):
        self.logged.append(record)

    def on_save(self, tr):
        self.events.append("save")

    def on_train_end(self, tr, result):
        self.events.append("end")


def test_a_logger_is_a_callback(tmp_path, data_dir):
    rec = Recorder()
    res = finetune(cfg(), tmp_path, progress=False, callbacks=[rec])
    assert rec.events == ["begin", "step", "step", "save", "step", "step", "save", "end"]
    assert [r["step"] for r in rec.logged] == [0, 2, 4] and all(r["extra"] == r["step"] for r in rec.logged)
    assert rec.logged == res.history
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == json.loads(json.dumps(res.history))  # the same records, written by the MetricsLog callback


class SyncRecorder(Callback):
    """Records the hooks where data-parallel ranks meet, and halves every step's rows (as a rank's share would)."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def on_step_begin(self, tr):
        self.events.append(f"rows {len(tr.rows)}")
        tr.rows = tr.rows[: len(tr.rows) // 2]

    def on_pre_optimizer_step(self, tr):
        assert any(p.grad is not None for p in tr.params.values()) and tr.step_loss > 0
        self.events.append("pre-opt")

    def on_scores(self, tr):
        self.events.append(f"scores {sorted(tr.scores)[0]}")

    def on_result(self, tr):
        self.events.append(f"result {tr.result.best_step}")


def test_rank_synchronisation_is_a_callback(tmp_path, data_dir):
    import inspect

    from ntkft.finetune import loop
    from ntkft.finetune.callbacks import RankSync, default_callbacks

    rec = SyncRecorder()
    finetune(cfg(max_steps=2), None, progress=False, callbacks=[rec])
    assert rec.events[:3] == ["scores loss", "rows 8", "pre-opt"] and rec.events.count("pre-opt") == 2
    assert rec.events[-1].startswith("result ")
    assert isinstance(default_callbacks(cfg(), None)[0], RankSync)  # first: every other callback sees synced state
    src = inspect.getsource(loop)
    assert "self.ranks." not in src.replace("self.ranks.main", "")  # no communication in the loop itself
    assert len(inspect.getsource(loop.Trainer).splitlines()) <= 200


def test_constant_predictor_beside_every_score(tmp_path, data_dir):
    from ntkft.finetune.data import load_splits

    for task, kw in (("stsb", {}), ("rte", {"n_train": 40, "n_test": 20})):
        c = cfg(task=task, **kw)
        res = finetune(c, tmp_path / task, progress=False)
        _, train, _, test = load_splits(c, None)
        if task == "stsb":
            want = float(np.mean((np.asarray(test.labels) - np.mean(train.labels)) ** 2))
            assert res.baseline_test["mse"] == pytest.approx(want, rel=1e-6) and res.headline == "mse"
            assert res.beats_baseline == (res.test_best["mse"] < want) and res.f1_average is None
            assert res.baseline.startswith("training mean")
        else:
            major = np.bincount(np.asarray(train.labels)).argmax()
            want = float(np.mean(np.asarray(test.labels) == major))
            assert res.baseline_test["accuracy"] == pytest.approx(want) and res.f1_average == "binary"
            assert res.beats_baseline == (res.test_best["accuracy"] > want)
        assert set(res.baseline_val) == set(res.val_best) and set(res.baseline_test) == set(res.test_best)
        assert (not res.beats_baseline) == any("no better than the constant predictor" in w for w in res.warnings)
        back = json.loads((tmp_path / task / "result.json").read_text())
        assert back["beats_baseline"] == res.beats_baseline and "baseline_val" in back


def test_samples_per_second_after_a_resume_with_nothing_left_to_train(tmp_path, data_dir, monkeypatch):
    c = cfg(save_every=1)
    real = Trainer._final
    monkeypatch.setattr(Trainer, "_final", killed_on_call(real, 1))  # killed after the last checkpoint
    with pytest.raises(KeyboardInterrupt):
        finetune(c, tmp_path, progress=False)
    monkeypatch.undo()
    res = finetune(c, tmp_path, progress=False)
    assert res.stopped_step == 4 and res.samples_per_second > 0 and res.seconds > 0


def test_progress_bar_shows_the_metric_beside_the_constant(data_dir, capsys):
    finetune(cfg(), None, progress=True)
    err = capsys.readouterr().err
    assert "val_mse=" in err and "const=" in err


def test_cli_summary_table_names_the_constant_and_the_f1(tmp_path, capsys, data_dir):
    code, out, err = run_cli(["finetune", "--model", "tiny-bert", "--task", "rte", "--n-train", "40", "--n-test", "16",
                              "--max-length", "24", "--max-steps", "2", "--eval-every", "1", "--lr", "1e-3",
                              "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert "constant (majority class" in out and "f1 (binary)" in out and "constant predictor on test accuracy" in out


def test_a_new_setting_is_one_registry_entry(monkeypatch):
    from ntkft.config import make
    from ntkft.finetune import settings
    from ntkft.finetune.settings.base import Setting
    from ntkft.reproduce.config import ModelPlan

    new = Setting("top", "a made-up setting", trains="head", optimizer="gd", lr={"gd": 0.3, "adamw": 1e-3},
                  max_steps=7, options=frozenset({"layers"}))
    monkeypatch.setitem(settings.SETTINGS, "top", new)
    c = FinetuneConfig.make(setting="top", layers=2)
    assert (c.optimizer, c.lr, c.max_steps) == ("gd", 0.3, 7)
    assert make(ModelPlan, name="minilm-l6", setting="top", layers=2).setting == "top"
    with pytest.raises(Exception, match="layers: applies to settings head, probe, top, not 'full'"):
        FinetuneConfig.make(setting="full", layers=2)


def test_kernel_drift_callback_points(data_dir):
    res = finetune(cfg(drift_every=2, drift_n=4, lr=1e-2), None, progress=False)
    assert [d["step"] for d in res.drift] == [0, 2, 4]  # the start once, then every drift_every steps
    assert res.drift[0]["kernel_drift"] == 0 and res.drift[-1]["kernel_drift"] > 0
    assert res.drift[-1]["param_distance"] > 0 and res.drift[-1]["linearisation_gap"] >= 0
