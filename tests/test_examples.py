"""examples/*.py run as a user would run them (a fresh process each), at tiny scale: a random tiny model and a
handful of rows through the NTKFT_EXAMPLE_* variables every example reads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def test_there_are_examples():
    assert {p.stem for p in EXAMPLES} >= {"kernel", "finetune", "stopping", "task_vectors", "results_pandas"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(path, tmp_path):
    if path.stem == "results_pandas":
        pytest.importorskip("pandas")
    env = {**os.environ, "NTKFT_EXAMPLE_MODEL": "tiny-bert", "NTKFT_EXAMPLE_N": "12",
           "NTKFT_EXAMPLE_OUT": str(tmp_path / "out"), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip(), f"{path.name} printed nothing"
