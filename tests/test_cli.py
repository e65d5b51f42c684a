"""The CLI: listings, and bad input as one line on stderr with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run(*args, env=None, capsys=None):
    """`ntkft ARGS`: in-process when given capsys (fast), else in a fresh interpreter (with `env`)."""
    if capsys is not None and env is None:
        from types import SimpleNamespace

        from conftest import run_cli

        code, out, err = run_cli([str(a) for a in args], capsys)
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "ntkft.cli", *args], capture_output=True, text=True, env=e,
                          timeout=600)


def one_error_line(p):
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("ntkft: error")]
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def test_models_and_tasks_listing(data_dir, capsys):
    p = run("models")  # one fresh interpreter: the installed entry point, end to end
    assert p.returncode == 0 and "smollm2-135m" in p.stdout and "tiny-bert" in p.stdout
    p = run("tasks", capsys=capsys)
    assert p.returncode == 0
    assert "rte              classification" in p.stdout and "train=2490" in p.stdout and "train=67349" in p.stdout


def test_bad_inputs_exit_with_one_line(tmp_path, data_dir, capsys):
    assert "unknown task 'nope'" in one_error_line(run("kernel", "--model", "tiny-bert", "--task", "nope", capsys=capsys))
    assert "unknown model 'nope'" in one_error_line(run("kernel", "--model", "nope", "--task", "rte", capsys=capsys))
    assert "unknown parameter group" in one_error_line(
        run("kernel", "--model", "tiny-bert", "--task", "rte", "--n", "4", "--params", "weights",
            "--out", str(tmp_path / "k"), capsys=capsys))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,y\nhello,1\nworld,oops\n")
    line = one_error_line(run("kernel", "--model", "tiny-bert", "--task", str(bad), "--text-columns", "a",
                              "--label-column", "y", "--task-type", "regression", "--n", "2", capsys=capsys))
    assert "bad.csv:3: score 'oops' is not a number" in line
    assert "kernel file not found" in one_error_line(run("stop", str(tmp_path / "none"), capsys=capsys))


def test_kernel_spectrum_stop_commands(tmp_path, data_dir, capsys):
    out = tmp_path / "k"
    p = run("kernel", "--model", "tiny-gpt2", "--task", "stsb", "--n", "24", "--max-length", "24", "--out", str(out),
            capsys=capsys)
    assert p.returncode == 0, p.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["n"] == 24 and meta["method"] == "factored" and meta["task"] == "stsb" and meta["num_params"] > 0
    p = run("spectrum", str(out), "--out", str(tmp_path / "s"), capsys=capsys)
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "s" / "spectrum.json").read_text())
    assert rep["stsb"]["beta_window"]["beta"] > 0 and (tmp_path / "s" / "spectrum.png").stat().st_size > 1000
    assert rep["stsb"]["beta"]["interval"] == "parametric" and "% parametric CI)" in p.stdout
    p = run("stop", str(out), "--batch-size", "8", capsys=capsys)
    assert p.returncode == 0, p.stderr
    st = json.loads((out / "stop" / "stop.json").read_text())  # a run folder of its own inside the kernel's
    assert st["t_hat"] >= 0 and "estimated" in st["sigma_source"]


@pytest.mark.slow
def test_demo_runs_on_offline_defaults(tmp_path, data_dir):
    p = run("demo", "--out", str(tmp_path / "demo"), "--n", "12", "--max-length", "32")
    assert p.returncode == 0, p.stderr
    assert "pooled outputs (8, 576)" in p.stdout and "T_hat" in p.stdout
    assert (tmp_path / "demo" / "spectrum.png").exists() and (tmp_path / "demo" / "kernel.safetensors").exists()


def test_spectrum_computes_kernels_over_draws(tmp_path, data_dir):
    p = run("spectrum", "--model", "tiny-bert", "--task", "stsb,rte", "--n", "24", "--draws", "2", "--max-length", "24",
            "--all-estimators", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    rep = json.loads((tmp_path / "spectrum.json").read_text())
    assert len(rep["stsb"]["over_draws"]["paper"]["betas"]) == 2 and "_relative_sample_size" in rep
    assert "paper fit over 2 draws" in p.stdout and "beta over 2 draws" in p.stdout
    assert (tmp_path / "stsb-draw1" / "kernel.safetensors").exists()


def test_a_bad_gemm_choice_stops_before_the_run_folder(tmp_path, data_dir):
    out = tmp_path / "k"
    p = run("kernel", "--model", "tiny-bert", "--task", "stsb", "--n", "4", "--out", out, "--data-dir", data_dir,
            env={"NTKFT_GEMM": "fastest"})
    assert "NTKFT_GEMM: must be one of auto, torch, onednn" in one_error_line(p)
    assert not out.exists()
