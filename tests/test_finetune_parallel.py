"""Data-parallel fine-tuning: 2 gloo ranks on 127.0.0.1 give the 1-process result for the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ARGS = ["--model", "tiny-llama", "--task", "stsb", "--n-train", "40", "--n-test", "16", "--max-length", "24",
        "--batch-size", "8", "--max-steps", "6", "--eval-every", "2", "--patience", "50"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(n: int, out: Path, extra: list[str], base: list[str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}", "--master-addr=127.0.0.1",
                f"--master-port={_port()}"]
    cmd = (torchrun if n > 1 else [sys.executable]) + ["-m", "ntkft.cli", "finetune", *(ARGS if base is None else base), *extra,
                                                      "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("extra", [["--setting", "probe", "--optimizer", "gd", "--lr", "0.05"],
                                   ["--setting", "full", "--optimizer", "gd", "--lr", "0.05"]],
                         ids=["probe-adamw", "full-gd"])
def test_two_ranks_match_one_process(tmp_path, data_dir, extra):
    one = _run(1, tmp_path / "one", extra)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _run(2, tmp_path / "two", extra)
    assert two.returncode == 0, "\n".join(ln for ln in two.stderr.splitlines() if "it/s" not in ln)[-6000:]
    a = json.loads((tmp_path / "one" / "result.json").read_text())
    b = json.loads((tmp_path / "two" / "result.json").read_text())
    assert a["best_step"] == b["best_step"] and a["stopped_step"] == b["stopped_step"]
    for k, v in a["test_best"].items():
        assert b["test_best"][k] == pytest.approx(v, rel=1e-4, abs=1e-6)
    for ha, hb in zip(a["history"], b["history"], strict=True):
        assert hb["train_loss"] == (None if ha["train_loss"] is None else pytest.approx(ha["train_loss"], rel=1e-4))
    files = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "one").iterdir())  # written once, by rank 0


BERT = ["--model", "tiny-bert", "--task", "stsb", "--n-train", "32", "--n-test", "16", "--max-length", "24",
        "--patience", "50"]


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return {**load_file(path / "model" / "model.safetensors"), **{f"head.{k}": v for k, v in
                                                                  load_file(path / "model" / "head.safetensors").items()}}


def test_one_gd_step_with_dropout_matches_one_process(tmp_path, data_dir):
    """tiny-bert (dropout 0.1): one full-batch GD step, 2 ranks vs 1 process, on the weights (the hashed masks do
    not depend on the split; with each rank's own torch generator the two differ by ~3e-3 relative)."""
    extra = [*BERT, "--optimizer", "gd", "--lr", "0.5", "--max-steps", "1", "--no-eval-at-start", "--batch-size", "8"]
    one, two = _run(1, tmp_path / "one", extra, []), _run(2, tmp_path / "two", extra, [])
    assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-4000:]
    from ntkft.models import load_model

    w0 = load_model("tiny-bert").backbone.state_dict()
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    diff = sum(float((a[k] - b[k]).double().pow(2).sum()) for k in a) ** 0.5
    norm = sum(float(a[k].double().pow(2).sum()) for k in a) ** 0.5
    moved = sum(float((a[k] - w0[k]).double().pow(2).sum()) for k in a if k in w0) ** 0.5
    assert moved > 1e-3  # the step moved the backbone
    print(f"relative to the weights {diff / norm:.2e}, to the update {diff / moved:.2e}")
    assert diff / norm <= 1e-6 and diff / moved <= 1e-4, (diff / norm, diff / moved)


@pytest.mark.parametrize("extra", [["--setting", "full", "--optimizer", "adamw", "--lr", "1e-3"],
                                   ["--setting", "linearized", "--optimizer", "adamw", "--lr", "1e-3"]],
                         ids=["full", "linearized"])  # the probe trains on eval-mode features: tiny-llama's test above
def test_adamw_with_dropout_matches_one_process(tmp_path, data_dir, extra):
    """tiny-bert (dropout 0.1), 12 AdamW steps of 8 samples with early stopping armed: the same history, best step
    and test metrics to 1e-4."""
    args = [*BERT, *extra, "--batch-size", "8", "--max-steps", "12", "--eval-every", "4", "--no-save-model"]
    one, two = _run(1, tmp_path / "one", args, []), _run(2, tmp_path / "two", args, [])
    assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-4000:]
    a = json.loads((tmp_path / "one" / "result.json").read_text())
    b = json.loads((tmp_path / "two" / "result.json").read_text())
    assert (a["best_step"], a["stopped_step"]) == (b["best_step"], b["stopped_step"])
    for ha, hb in zip(a["history"], b["history"], strict=True):
        for k, v in ha.items():
            if isinstance(v, float):
                assert hb[k] == pytest.approx(v, rel=1e-4, abs=1e-7), (k, ha, hb)
    for k, v in a["test_best"].items():
        assert b["test_best"][k] == pytest.approx(v, rel=1e-4, abs=1e-7)
