"""Shared fixtures: the real data directory, real models loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NTKFT_DATA_DIR", ROOT.parent / "shared" / "data"))
os.environ["NTKFT_DATA_DIR"] = str(DATA)
# one process, or one of pytest-xdist's workers: the cores shared out, and subprocesses told the same (OpenMP
# threads beyond the cores spin against each other: 2-10x slower)
_THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
torch.set_num_threads(_THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"real task data not found at {DATA}; set NTKFT_DATA_DIR")
    return DATA


@pytest.fixture(scope="session")
def smollm2():
    from ntkft.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def minilm():
    from ntkft.models import load_model

    return load_model("minilm-l6")


def killed_on_call(fn, n: int):
    """`fn` wrapped to raise KeyboardInterrupt on its n-th call: a run killed part-way, for resume tests."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return fn(*args, **kwargs)

    return wrapper


def write(d: Path, name: str, text: str | bytes) -> str:
    """`text` (or bytes) as the file d/name, its folders made; the path as a string (a CLI argument)."""
    p = d / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text)
    return str(p)


def npy(d: Path, name: str, arr) -> str:
    """`arr` saved as the .npy file d/name; the path as a string."""
    import numpy as np

    p = d / name
    np.save(p, arr)
    return str(p)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """`ntkft ARGS` in-process (fast): (exit code, stdout, stderr)."""
    import sys

    from ntkft.cli import main

    old = sys.argv
    sys.argv = ["ntkft", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = old
    cap = capsys.readouterr()
    return code, cap.out, cap.err
