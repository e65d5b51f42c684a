"""One options object from the CLI to the plan; one `ntkft kernel` with the executor as a parameter; errors that
name their argument at construction; the run key's form (old run folders must resume)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from ntkft.errors import ConfigError, KernelError, NtkftError, param_error
from ntkft.kernel import Method, kernel_matrix, load_kernel_file
from ntkft.kernel.executor import LocalExecutor, choose_executor
from ntkft.kernel.options import KernelOptions
from ntkft.pipeline import KernelConfig, compute_kernel_file, kernel_run_key

SRC = Path(__file__).resolve().parents[1] / "src" / "ntkft"


def test_no_patching_and_no_exceptions_for_control_flow_in_src():
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert "unittest.mock" not in text and "from unittest import mock" not in text, path
        assert "_Finished" not in text, path
        assert not re.search(r"^\s*\w+\.param = ", text, re.M) or path.name == "errors.py", path  # param= at construction


def test_errors_take_param_at_construction():
    e = param_error("max_length", "too long")
    assert isinstance(e, ConfigError) and e.param == "max_length" and str(e) == "max_length: too long"
    k = param_error("kernel", "not square", KernelError)  # another kind: that class, typed as it
    assert type(k) is KernelError and k.param == "kernel" and str(k) == "kernel: not square"
    assert NtkftError("plain").param is None and ConfigError("x: y", param="x").param == "x"


def test_options_are_frozen_and_errors_name_the_field():
    o = KernelOptions.of(method="jacobian", batch_size=2)
    with pytest.raises(ValidationError):  # frozen
        o.batch_size = 3  # type: ignore[misc]
    assert KernelOptions.of(o, batch_size=3).method.value == "jacobian"  # shortcuts replace fields of `options`
    for kw, param in [({"max_memory": 0}, "max_memory"), ({"max_memory_gb": float("nan")}, "max_memory_gb"),
                      ({"max_disk_gb": -1}, "max_disk_gb"), ({"method": "sketch"}, "sketch_dim"),
                      ({"params": "weights"}, "params"), ({"max_memory": 1, "max_memory_gb": 1}, "max_memory_gb")]:
        with pytest.raises(ConfigError) as e:
            (KernelOptions.of if "max_memory_gb" not in kw and "max_disk_gb" not in kw else _config)(**kw)
        assert e.value.param == param, kw
    cfg = _config(max_memory_gb=0.5, max_disk_gb=0, batch_size=4)
    assert cfg.options().max_memory == 2**29 and cfg.options().max_disk == 0 and cfg.options().batch_size == 4


def _config(**kw):
    from ntkft.config import make

    return make(KernelConfig, **kw)


def test_kernel_matrix_takes_the_options_object(data_dir):
    from ntkft.models import Readout, load_model
    from ntkft.tasks import encode, load_task, subsample

    m = load_model("tiny-bert")
    x = encode(m.tokenizer, m.kind, subsample(load_task("stsb", "train", data_dir), 5, seed=0), max_length=16)
    r = Readout.from_loaded(m)
    by_keywords = kernel_matrix(r, x, method="jacobian", batch_size=2, progress=False)
    by_object = kernel_matrix(r, x, options=KernelOptions.of(method="jacobian", batch_size=2, progress=False))
    assert torch.equal(by_keywords, by_object)
    # the pipeline hands the same object on: a kernel file equals kernel_matrix on its inputs and head
    kf = compute_kernel_file("tiny-bert", "stsb", n=5, max_length=16, method="jacobian", batch_size=2, progress=False)
    assert torch.equal(kf.K, kernel_matrix(r, {"input_ids": kf.input_ids, "attention_mask": kf.attention_mask},
                                           method="jacobian", batch_size=2, progress=False))


def test_the_run_key_keeps_its_form(tmp_path, data_dir):
    """Folders written before KernelOptions resume: same fields, same values (the key_digest hashes this dict)."""
    from ntkft.models import fingerprint
    from ntkft.pipeline import build_readout
    from ntkft.tasks import load_task, subsample

    kf = compute_kernel_file("tiny-bert", "stsb", n=4, max_length=16, out=tmp_path / "k", progress=False)
    data = subsample(load_task("stsb", "train", data_dir), 4, seed=0)
    _, readout = build_readout("tiny-bert")
    expected = {"model": "tiny-bert", "weights": fingerprint(readout), "data": data.fingerprint(), "task": "stsb",
                "split": "train", "n": 4, "max_length": 16, "seed": 0, "params": "all", "method": "factored",
                "layers": None, "sketch_dim": None, "sigma": 1.0}
    cfg = _config(model="tiny-bert", task="stsb", n=4, max_length=16)
    assert kernel_run_key(cfg, readout, data, Method(kf.meta["method"])) == expected
    assert json.loads((tmp_path / "k" / "meta.json").read_text())["key"] == expected


def test_the_cli_flags_are_generated_from_the_config():
    from typer.main import get_command

    import ntkft.cli as cli
    from ntkft.cli._common import app

    cli._register()
    cmd = get_command(app).commands["kernel"]  # type: ignore[attr-defined]
    flags = {o for p in cmd.params for o in p.opts}
    skipped = {"max_memory", "max_disk", "progress"}
    assert {f"--{n.replace('_', '-')}" for n in KernelConfig.model_fields if n not in skipped} <= flags
    assert "--samples" in flags and "--max-memory" not in flags
    assert "kernel-distributed" in get_command(app).commands  # type: ignore[attr-defined]  # the deprecated alias


def test_the_executor_is_chosen_in_one_place(monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(v, raising=False)
    assert isinstance(choose_executor(), LocalExecutor)
    with pytest.raises(ConfigError, match="torchrun"):
        choose_executor(distributed=True)


def test_ntkft_kernel_under_torchrun_runs_distributed(tmp_path, data_dir):
    ref = compute_kernel_file("tiny-bert", "stsb", n=8, max_length=16, progress=False, max_memory=2**30).K
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "k"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={port}", "-m", "ntkft.cli", "kernel", "--model", "tiny-bert", "--task", "stsb",
           "--samples", "8", "--max-length", "16", "--max-memory-gb", "1", "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0 and "2 ranks" in p.stdout, p.stderr[-3000:]
    kf = load_kernel_file(out)
    assert float((kf.K - ref).norm() / ref.norm()) <= 1e-10 and not (out / "work").exists()
