"""Task vectors of a real model: MiniLM fine-tuned briefly on SST-2 and RTE (real data), then negation, addition and
the kernel-orthogonality table."""

from __future__ import annotations

import math

import pytest

from ntkft.config import make

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """Two short full fine-tuning runs of MiniLM (run folders, as `ntkft finetune` writes them)."""
    from ntkft.finetune import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("tvreal")
    out = {}
    for task, steps in (("sst2", 16), ("rte", 8)):
        cfg = FinetuneConfig(model="minilm-l6", task=task, n_train=256, val=32, n_test=64, max_steps=steps,
                             batch_size=16, lr=2e-4, max_length=32, eval_every=steps, seed=0)
        finetune(cfg, root / task, progress=False)
        out[task] = root / task
    return out


def _common() -> dict:
    return {"pretrained": "minilm-l6", "n_val": 32, "n_test": 64, "max_length": 32, "batch_size": 32}


def test_negation_raises_target_error_and_keeps_control(runs, tmp_path):
    from ntkft.taskvec import NegateConfig, run_negate

    cfg = make(NegateConfig, target=str(runs["sst2"]), control=str(runs["rte"]), lambdas=[0.0, 1.0, 2.0],
               threshold=0.95, save_model=False, **_common())
    res = run_negate(cfg, tmp_path / "neg", progress=False)
    chosen = next(r for r in res.val if r["lambda"] == res.best_lambda)
    assert chosen["control_kept"] >= 0.95  # on validation, as the rule demands
    assert res.best_lambda > 0
    g = res.negation_gap
    assert g["error"] == "error_rate" and g["gap"] > 0, g  # Corollary 1: negation is worse than fine-tuning
    assert res.test["target"]["negated"] < res.test["target"]["finetuned"]
    assert res.control_kept >= 0.95 - 0.1  # the test rows may move a little from the validation rows
    assert (tmp_path / "neg" / "negation.json").is_file()


def test_addition_reports_normalised_accuracy_per_task(runs, tmp_path):
    from ntkft.taskvec import AddConfig, run_add

    cfg = make(AddConfig, finetuned=[str(runs["sst2"]), str(runs["rte"])], lambdas=[0.0, 0.5, 1.0], n_linear=8,
               save_model=True, **_common())
    res = run_add(cfg, tmp_path / "add", progress=False)
    assert set(res.test) == {"sst2", "rte"} and res.metrics == {"sst2": "accuracy", "rte": "accuracy"}
    for v in res.test.values():
        assert math.isfinite(v["normalised"]) and 0 < v["normalised"] < 2
    assert "hold-out" in " ".join(res.notes)  # lambda chosen on the runs' own validation rows
    lin = res.linearised["sst2"]
    assert lin["n"] == 8 and math.isfinite(lin["rel_error"]) and 0 <= lin["agreement"] <= 1
    from ntkft.models.checkpoint import load_finetuned

    _, r, info = load_finetuned(tmp_path / "add" / "merged", head="rte")
    assert info["head_of"] == "rte" and r.out_dim == 2


def test_orthogonality_table_real_model(runs, tmp_path):
    from ntkft.taskvec import OrthogonalityConfig, run_orthogonality

    cfg = make(OrthogonalityConfig, pretrained="minilm-l6", tasks=["sst2", "rte"], n=4, max_length=24,
               pair_accuracy=False)
    res = run_orthogonality(cfg, tmp_path / "orth", progress=False)
    assert len(res.rows) == 1  # one row per pair
    for r in res.rows:
        assert 0 < r["kernel_ratio"] <= 1 and 0 <= r["kernel_ratio_centred"] <= 1
