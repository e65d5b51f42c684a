"""Issue 27's experiment: one kernel for prediction and training (refusal of a mismatch), dropout off, the rate
fit and its bootstrap against a known rate, the rank statistics against peers, the verdict rule, the configs
end to end at tiny scale with a fault injected and resumed, stale units recomputed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ntkft.efficiency import EfficiencyConfig, InjectedFault, run
from ntkft.efficiency.measures import measure, partial_spearman, verdict
from ntkft.efficiency.summary import Summary
from ntkft.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def tiny(path: str, tasks: int | None = None, **over) -> EfficiencyConfig:
    """A config file's design at tiny scale: the same variants (first `tasks` tasks and their controls), tiny-bert,
    small pool, sizes and seeds."""
    raw = yaml.safe_load((ROOT / path).read_text())
    if tasks is not None:
        raw["tasks"] = raw["tasks"][:tasks]
        raw["controls"] = [c for c in raw.get("controls", []) if c["parent"] in raw["tasks"]]
    raw |= {"model": "tiny-bert", "max_length": 16, "pool": 48, "n_test": 24, "beta_draws": 4, "paper_n": 16,
            "linear": {"sizes": [4, 8, 12], "subsets": 2, "min_val": 8},
            "finetune": {"sizes": [8, 16, 24], "seeds": 1, "lr": 1e-3, "epochs": 1, "min_steps": 2, "min_val": 8,
                         "batch_size": 8},
            "bootstrap": 10, "device": "cpu"} | over
    raw["test"] = {**raw.get("test", {}), "power_sims": 100}
    return EfficiencyConfig(**raw)


def test_cpu_config_end_to_end_with_a_fault_resumed(tmp_path: Path, data_dir: Path) -> None:
    cfg = tiny("configs/efficiency-cpu.yaml", tasks=2)
    out = tmp_path / "eff"
    with pytest.raises(InjectedFault):
        run(cfg, out, data_dir=str(data_dir), progress=False, fail_after=4)
    two = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"workers": 2})})  # the process pool
    res = run(two, out, data_dir=str(data_dir), progress=False, docs=tmp_path / "docs")
    assert len(res["reused"]) == 4 and len(res["computed"]) > 0  # the four units finished before the fault
    s = Summary.model_validate(json.loads((out / "summary.json").read_text()))
    names = [t.name for t in s.tasks]
    assert names == cfg.variants
    for t in s.tasks:  # a control shares its parent's kernel, so its beta
        if t.control_of:
            assert t.beta.ntkft == next(p for p in s.tasks if p.name == t.control_of).beta.ntkft
    assert set(s.primary_test.power.model_dump(by_alias=True)) == {"0.5", "0.7", "0.8"}
    assert s.verdict in ("supported", "not supported", "inconclusive")
    text = (tmp_path / "docs" / "README.md").read_text()
    assert text.startswith("# ") and "**Verdict:" in text.splitlines()[2]
    assert (tmp_path / "docs" / "figures" / "beta_vs_rate.png").stat().st_size > 1000
    # the same config again: nothing recomputed; another learning rate: only the cells are
    again = run(cfg, out, data_dir=str(data_dir), progress=False)
    assert again["computed"] == []
    lr = run(cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"lr": 2e-3})}), out,
             data_dir=str(data_dir), progress=False)
    assert lr["computed"] and all(u.startswith("cells/") for u in lr["computed"])


def test_gpu_config_runs_at_tiny_scale(tmp_path: Path, data_dir: Path) -> None:
    cfg = tiny("configs/efficiency-gpu.yaml", tasks=1)
    res = run(cfg, tmp_path / "g", data_dir=str(data_dir), progress=False)
    assert res["summary"].tasks[0].curve is not None


def test_a_kernel_of_another_model_is_refused(tmp_path: Path, data_dir: Path) -> None:
    """The kernel file says sigma 0.1; the cells fine-tune sigma 1: the run stops in one line naming sigma."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    cfg = tiny("configs/efficiency-cpu.yaml", tasks=1, controls=[])
    cfg = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"sizes": [8, 16, 24]})})
    out = tmp_path / "k"
    with pytest.raises(InjectedFault):
        run(cfg, out, data_dir=str(data_dir), progress=False, fail_after=1)  # the kernel only
    path = out / "kernels" / f"{cfg.tasks[0]}.safetensors"
    with safe_open(str(path), "pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    facts = json.loads(meta["facts"])
    save_file(tensors, str(path), meta | {"facts": json.dumps(facts | {"sigma": 0.1})})
    with pytest.raises(ConfigError, match=r"sigma = 1\.0 in the cell, 0\.1 in the kernel file"):
        run(cfg, out, data_dir=str(data_dir), progress=False)
    import os

    import ntkft

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.model_dump()))
    env = os.environ | {"PYTHONPATH": str(Path(ntkft.__file__).parents[1])}  # this checkout's ntkft, from any cwd
    proc = subprocess.run([sys.executable, "-m", "ntkft.cli", "efficiency", "--config", "c.yaml", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-500:]
    last = proc.stderr.strip().splitlines()[-1]  # (progress bars before it)
    assert last.startswith("ntkft: error: cell ") and "sigma" in last and "Traceback" not in proc.stderr


def test_dropout_is_off_in_training_mode() -> None:
    """A cell's FinetuneConfig sets dropout 0, which the Trainer installs at every site: the train-mode output is
    then the eval-mode one (the model's own rates are not)."""
    import torch

    from ntkft.efficiency.cells import finetune_config, train_equals_eval
    from ntkft.finetune.dropout import install
    from ntkft.models import Readout, load_model

    ft = finetune_config(tiny("configs/efficiency-cpu.yaml", tasks=1), Path("task.jsonl"), 8, 16)
    assert ft.dropout == 0.0
    ids = torch.randint(5, 100, (4, 12))
    mask = torch.ones_like(ids)
    own = Readout.from_loaded(load_model("tiny-bert"), out_dim=1)
    install(own, None, 0, left=False)  # dropout=None: the model's own rates
    assert not train_equals_eval(own, ids, mask)  # tiny-bert has dropout: the check can fail
    r = Readout.from_loaded(load_model("tiny-bert"), out_dim=1)
    install(r, ft.dropout, ft.seed, left=False)  # as Trainer.setup does with the cell's config
    assert train_equals_eval(r, ids, mask)


def test_measure_recovers_a_known_rate_and_covers_it() -> None:
    rng = np.random.default_rng(0)
    sizes = [32, 64, 128, 256, 512, 1024]
    truth = 0.1 + 2.0 * np.asarray(sizes, float) ** -0.5
    hits = 0
    for rep in range(20):
        noise = rng.normal(0, 0.2, (3, len(sizes), 400))  # per seed, size and test row
        row = rng.normal(0, 0.2, (1, 1, 400))  # a row effect shared by every cell (one test set)
        errors = truth[None, :, None] + noise + row
        base = np.full((3, 400), 2.0) + row[0]
        m = measure(sizes, errors, base, n_boot=60, seed=rep)
        assert abs(m.rate - 0.5) < 0.25
        hits += m.rate_ci[0] <= 0.5 <= m.rate_ci[1]
        assert m.n_half_ci[0] <= m.n_half <= m.n_half_ci[1]
    assert hits >= 14  # a 90% interval: 18 of 20 expected


def test_partial_spearman_equals_the_residual_correlation() -> None:
    from scipy import stats

    rng = np.random.default_rng(1)
    x, z = rng.normal(size=15), rng.normal(size=15)
    y = x + z + rng.normal(size=15)
    rx, ry, rz = (stats.rankdata(v) for v in (x, y, z))
    res = [a - np.polyval(np.polyfit(rz, a, 1), rz) for a in (rx, ry)]
    assert partial_spearman(x, y, z) == pytest.approx(np.corrcoef(*res)[0, 1], abs=1e-12)


def test_verdict_rule() -> None:
    assert verdict(0.01, 0.3, 0.05, 0.8, 13) == "supported"
    assert verdict(0.4, 0.85, 0.05, 0.8, 13) == "not supported"
    assert verdict(0.4, 0.6, 0.05, 0.8, 13) == "inconclusive"
    assert verdict(0.4, 0.85, 0.05, 0.8, 8) == "inconclusive"  # planned variants missing
    assert verdict(math.nan, 0.9, 0.05, 0.8, 13) == "inconclusive"


def test_configs_state_the_test_and_its_power() -> None:
    """Each config's comment states k and the power at rho 0.5/0.7/0.8 that the simulation gives."""
    from ntkft.select.stats import spearman_power

    for name in ("configs/efficiency-cpu.yaml", "configs/efficiency-gpu.yaml"):
        text = (ROOT / name).read_text()
        cfg = EfficiencyConfig(**yaml.safe_load(text))
        k = len(cfg.variants)
        assert k >= 12 and len(cfg.tasks) == 8
        stated = next(line for line in text.splitlines() if line.startswith("# power"))
        for rho in (0.5, 0.7, 0.8):
            p = spearman_power(k, rho, alpha=cfg.test.alpha, n_sim=cfg.test.power_sims)
            assert f"rho {rho}: {p:.2f}" in stated, (name, stated, p)
        assert f"k = {k}" in text


def test_a_curve_that_never_beats_the_constant_predictor_has_rate_zero() -> None:
    rng = np.random.default_rng(2)
    errors = 0.5 + rng.normal(0, 0.3, (3, 4, 300))  # noise around the constant predictor's error
    base = np.full((3, 300), 0.3)  # far below every resample's error at the largest size
    m = measure([64, 128, 256, 1024], errors, base, n_boot=30)
    assert m.rate == 0.0 and m.rate_ci == (0.0, 0.0) and math.isnan(m.n_half)


def test_the_rate_fit_keeps_the_floor_non_negative() -> None:
    """On a curve that still accelerates (MiniLM SST-2 at n = 64, 128, 256), measure's fit keeps c >= 0 (fit_rate's
    floor; a free c goes negative and r to its lower bound: tests/test_select_predictors.py)."""
    from ntkft.select.stats import fit_rate

    sizes = [64, 128, 256]
    e = np.array([0.443, 0.39, 0.23])
    errors = np.repeat(e[None, :, None], 2, axis=2)  # one seed, two identical test rows
    m = measure(sizes, errors, np.full((1, 2), 0.5), n_boot=0)
    assert m.c == 0.0 and 0.3 < m.rate < 0.6 and m.rate == fit_rate(sizes, e).r
