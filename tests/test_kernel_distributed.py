"""Distributed eNTK: 2 gloo ranks on 127.0.0.1 give the single-process K, and a killed run resumes to it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from ntkft.kernel import load_kernel_file
from ntkft.kernel.distributed import DIE_AFTER, plan_shares
from ntkft.pipeline import compute_kernel_file

# a fixed memory budget: the same plan (and checkpoint key) on the rerun
ARGS = ["--model", "tiny-bert", "--task", "stsb", "--samples", "16", "--max-length", "24", "--max-memory-gb", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", **(extra_env or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={_free_port()}", "-m", "ntkft.cli", "kernel-distributed", *ARGS, "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_two_gloo_ranks_killed_midway_resume_to_the_single_process_kernel(tmp_path, data_dir):
    ref = compute_kernel_file("tiny-bert", "stsb", n=16, max_length=24, progress=False, max_memory=2**30).K
    out = tmp_path / "k"
    p = _torchrun(out, {DIE_AFTER: "1:1"})  # rank 1 exits after its first unit: the whole launch fails
    assert p.returncode != 0 and not (out / "kernel.safetensors").exists(), p.stderr[-2000:]
    assert (out / "work" / "rank000").is_dir() and (out / "work" / "rank001").is_dir()
    p = _torchrun(out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "rank 1 resumes" in p.stderr, p.stderr[-3000:]
    assert "2 ranks" in p.stdout, p.stdout
    kf = load_kernel_file(out)
    assert kf.K.dtype == torch.float64 and kf.K.shape == (16, 16)
    assert rel(kf.K, ref) <= 1e-10
    assert not (out / "work").exists()  # work units dropped after K was written
    assert kf.meta["n"] == 16 and kf.meta["method"] == "factored"


def test_without_torchrun_the_cli_says_how_to_launch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR")}
    p = subprocess.run([sys.executable, "-m", "ntkft.cli", "kernel-distributed", *ARGS, "--out", str(tmp_path / "k")],
                       capture_output=True, text=True, timeout=300, env=env)
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("ntkft: error")]
    assert p.returncode == 2 and len(lines) == 1 and "torchrun" in lines[0], p.stderr[-2000:]
    assert "Traceback" not in p.stderr


def test_round_robin_shares_run_every_unit_once(data_dir):
    from ntkft.models import Readout, load_model
    from ntkft.tasks import encode, load_task, subsample

    m = load_model("tiny-bert")
    x = encode(m.tokenizer, m.kind, subsample(load_task("stsb", "train", data_dir), 9, seed=1), max_length=24)
    r = Readout.from_loaded(m)
    (one,) = plan_shares(r, x, 1, method="jacobian", batch_size=2)
    for world in (2, 3, 8):
        s = shares_of(r, x, world)
        assert [q.rank for q in s] == list(range(world)) and sum(q.units for q in s) == one.units
        assert sum(q.cost for q in s) == pytest.approx(one.cost) and all(q.reduce_bytes == 9 * 9 * 8 for q in s)
        assert max(q.units for q in s) - min(q.units for q in s) <= 1


def shares_of(r, x, world):
    return plan_shares(r, x, world, method="jacobian", batch_size=2)
