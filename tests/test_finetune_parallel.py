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


def _run(n: int, out: Path, extra: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}", "--master-addr=127.0.0.1",
                f"--master-port={_port()}"]
    cmd = (torchrun if n > 1 else [sys.executable]) + ["-m", "ntkft.cli", "finetune", *ARGS, *extra, "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("extra", [["--setting", "probe", "--lr", "0.05"],
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
