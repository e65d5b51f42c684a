"""Run folders: --overwrite as a transaction (rows 1-3 of issue 29, a SIGKILL at every step of the swap), one
writer per folder, damaged finished outputs recomputed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import run_cli
from ntkft._runs import NEXT, RunFolder
from ntkft.errors import ConfigError

SRC = str(Path(__file__).resolve().parents[1] / "src")
FT = ["finetune", "--model", "tiny-bert", "--task", "stsb", "--n-train", "24", "--n-test", "8", "--max-length", "24",
      "--max-steps", "2"]
KERNEL = ["kernel", "--model", "tiny-gpt2", "--task", "rte", "--n", "8", "--max-length", "16"]


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file under `d` but the lock (which exists only while a process writes)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != ".ntkft-lock"}


def visible(d: Path) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(d).items() if not k.startswith(".ntkft-")}


def make_run(root: Path, key: dict, files: dict[str, str], overwrite: bool = False) -> RunFolder:
    rf = RunFolder(root, "t", key, overwrite)
    rf.open()
    for name, text in files.items():
        rf.write_text(name, text)
    rf.finish()
    return rf


OLD = {"a.txt": "old a", "model/w.bin": "old w", "model/deep/x.bin": "old x", "tb/ev": "old ev"}
NEW = {"a.txt": "new a", "model/w.bin": "new w", "model/deep/y.bin": "new y", "b.txt": "new b"}


def test_overwrite_moves_only_the_old_runs_files_at_any_depth(tmp_path):
    make_run(tmp_path, {"v": 1}, OLD)
    (tmp_path / "model" / "mynote.txt").write_text("mine")  # row 1: a user's file inside the run's folder
    (tmp_path / "model" / "deep" / "keep.txt").write_text("mine too")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "u.txt").write_text("row 2")
    with pytest.raises(ConfigError, match="--overwrite"):
        RunFolder(tmp_path, "t", {"v": 2}).open()
    rf = RunFolder(tmp_path, "t", {"v": 2}, overwrite=True)
    assert not rf.open() and rf.root == tmp_path / NEXT
    for name, text in NEW.items():
        rf.write_text(name, text)
    assert (tmp_path / "a.txt").read_text() == "old a"  # the old run stays usable until the new one completes
    rf.finish()
    got = visible(tmp_path)
    assert got.pop("meta.json")
    assert got == {**{k: v.encode() for k, v in NEW.items()}, "model/mynote.txt": b"mine",
                   "model/deep/keep.txt": b"mine too", "state/u.txt": b"row 2"}
    assert not (tmp_path / "tb").exists() and not (tmp_path / NEXT).exists()
    assert RunFolder(tmp_path, "t", {"v": 2}).open()  # the same key now resumes the new run


def test_a_failed_new_run_leaves_the_old_one_exactly(tmp_path):
    make_run(tmp_path, {"v": 1}, OLD)
    (tmp_path / "model" / "mynote.txt").write_text("mine")
    before = snapshot(tmp_path)
    rf = RunFolder(tmp_path, "t", {"v": 2}, overwrite=True)
    rf.open()
    rf.write_text("a.txt", "half")
    rf.release()  # the new run dies here
    assert visible(tmp_path) == before
    old = RunFolder(tmp_path, "t", {"v": 1})
    assert old.open() and old.complete  # the original command returns the old result


def test_a_user_file_where_the_new_run_writes_is_refused_before_anything_moves(tmp_path):
    make_run(tmp_path, {"v": 1}, {"a.txt": "old"})
    (tmp_path / "b.txt").write_text("mine")
    before = snapshot(tmp_path)
    rf = RunFolder(tmp_path, "t", {"v": 2}, overwrite=True)
    rf.open()
    rf.write_text("b.txt", "new")
    with pytest.raises(ConfigError, match="b.txt"):
        rf.finish()
    rf.release()
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(NEXT)} == before


LIGHT = textwrap.dedent("""
    import importlib.util, sys, types
    pkg = types.ModuleType("ntkft")  # ntkft._runs alone, without the package's heavy imports (torch)
    pkg.__path__ = [importlib.util.find_spec("ntkft").submodule_search_locations[0]]
    sys.modules["ntkft"] = pkg
""")
KILL = LIGHT + textwrap.dedent("""
    import os, signal, sys
    import ntkft._runs as r
    calls = {"n": 0}
    def killing(fn):
        def wrapped(*a, **k):
            calls["n"] += 1
            if calls["n"] == int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*a, **k)
        return wrapped
    rf = r.RunFolder(sys.argv[1], "t", {"v": 2}, True)
    rf.open()
    for name, text in NEW.items():
        rf.write_text(name, text)
    r._move = killing(r._move)
    r.shutil.rmtree = killing(r.shutil.rmtree)
    rf.finish()
""").replace("NEW", repr(NEW))


def test_sigkill_at_every_step_of_the_swap_leaves_one_whole_run(tmp_path):
    """Killed at each rename (and rmtree) of the swap: the next open() finds exactly the old run (before the new
    marker moved in) or exactly the new one (after), user files in place; the new command then completes it."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    outcomes = []
    n_moves = 1 + len(OLD) + len(NEW) + 1  # old marker, old files, new files, new marker (the commit point)
    for k in range(1, n_moves + 1):
        root = tmp_path / f"k{k}"
        make_run(root, {"v": 1}, OLD)
        (root / "model" / "mynote.txt").write_text("mine")
        old = visible(root)
        p = subprocess.run([sys.executable, "-c", KILL, str(root), str(k)], env=env, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == -9, p.stderr
        rf = RunFolder(root, "t", {"v": 1})
        assert rf.open() and rf.complete  # rolled back: the old run exactly
        assert visible(root) == old
        outcomes.append(k)
        rf.release()
        new = RunFolder(root, "t", {"v": 2}, overwrite=True)
        assert new.open() and new.complete  # rerun: the finished staging run is swapped in, nothing recomputed
        got = visible(root)
        got.pop("meta.json")
        assert got == {**{k2: v.encode() for k2, v in NEW.items()}, "model/mynote.txt": b"mine"}
        assert not any(n.name.startswith((".ntkft-next", ".ntkft-old", ".ntkft-journal")) for n in root.iterdir())
        new.release()
    assert outcomes == list(range(1, n_moves + 1))  # every rename of the swap was a kill point


def test_sigkill_after_the_commit_finishes_the_new_run(tmp_path):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    make_run(tmp_path, {"v": 1}, OLD)
    n_moves = 1 + len(OLD) + len(NEW) + 1  # old marker, old files, new files, new marker (commit)
    p = subprocess.run([sys.executable, "-c", KILL, str(tmp_path), str(n_moves + 1)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == -9, p.stderr
    with pytest.raises(ConfigError, match="different v"):
        RunFolder(tmp_path, "t", {"v": 1}).open()  # the new run is in place
    got = visible(tmp_path)
    got.pop("meta.json")
    assert got == {k: v.encode() for k, v in NEW.items()}
    assert not (tmp_path / NEXT).exists() and not (tmp_path / ".ntkft-old").exists()


def test_one_writer_per_folder(tmp_path):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    hold = subprocess.Popen([sys.executable, "-c", LIGHT + "import sys, time, ntkft._runs as r\n"
                             "rf = r.RunFolder(sys.argv[1], 't', {'v': 1}); rf.open(); print('held', flush=True)\n"
                             "time.sleep(60)", str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert hold.stdout is not None and hold.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match=f"pid {hold.pid}") as e:
            RunFolder(tmp_path, "t", {"v": 1}).open()
        assert str(tmp_path) in str(e.value) and time.monotonic() - t0 < 2
    finally:
        hold.kill()
        hold.wait()
    rf = RunFolder(tmp_path, "t", {"v": 1})  # the holder died (SIGKILL): the lock is free again
    assert rf.open()
    rf.finish()
    assert not (tmp_path / ".ntkft-lock").exists()


# ---------------------------------------------------------------- the commands (issue 29's rows)


def test_finetune_overwrite_keeps_user_files_rows_1_2(tmp_path, data_dir, capsys):
    out = tmp_path / "f"
    assert run_cli([*FT, "--out", str(out)], capsys)[0] == 0
    (out / "model" / "mynote.txt").write_text("x")
    (out / "state").mkdir()
    (out / "state" / "u.txt").write_text("y")
    first = json.loads((out / "result.json").read_text())
    code, _, err = run_cli([*FT, "--seed", "5", "--overwrite", "--out", str(out)], capsys)
    assert code == 0, err
    assert (out / "model" / "mynote.txt").read_text() == "x" and (out / "state" / "u.txt").read_text() == "y"
    assert json.loads((out / "result.json").read_text())["config"]["seed"] == 5 != first["config"]["seed"]
    assert not (out / NEXT).exists() and not list(out.glob(".ntkft-previous-*"))


def test_failed_kernel_overwrite_keeps_the_old_kernel_row_3(tmp_path, data_dir, capsys):
    out = tmp_path / "k"
    assert run_cli([*KERNEL, "--out", str(out)], capsys)[0] == 0
    before = snapshot(out)
    code, _, err = run_cli([*KERNEL, "--n", "12", "--method", "jacobian", "--params", "nope", "--overwrite", "--out",
                            str(out)], capsys)
    assert code == 2 and "Traceback" not in err
    assert visible(out) == before
    code, _, err = run_cli([*KERNEL, "--out", str(out)], capsys)  # the original command returns the old kernel
    assert code == 0, err
    assert visible(out) == before


def test_damaged_finished_kernel_is_recomputed_row_11(tmp_path, data_dir, capsys, caplog):
    out = tmp_path / "k"
    assert run_cli([*KERNEL, "--out", str(out)], capsys)[0] == 0
    good = (out / "kernel.safetensors").read_bytes()
    (out / "kernel.safetensors").write_bytes(good[: len(good) // 2])
    code, _, err = run_cli([*KERNEL, "--out", str(out)], capsys)
    assert code == 0 and "recomputing" in caplog.text and "already holds" not in caplog.text, err
    from ntkft.kernel import load_kernel_file

    assert load_kernel_file(out).K.shape == (8, 8)


def test_damaged_finished_finetune_is_recomputed(tmp_path, data_dir, capsys, caplog):
    out = tmp_path / "f"
    assert run_cli([*FT, "--out", str(out)], capsys)[0] == 0
    first = json.loads((out / "result.json").read_text())
    w = out / "model" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    code, _, err = run_cli([*FT, "--out", str(out)], capsys)
    assert code == 0 and "recomputing" in caplog.text, err
    caplog.clear()
    assert json.loads((out / "result.json").read_text())["best_step"] == first["best_step"]
    (out / "result.json").write_text('{"best_st')
    code, _, err = run_cli([*FT, "--out", str(out)], capsys)
    assert code == 0 and "recomputing" in caplog.text, err
    caplog.clear()
    assert json.loads((out / "result.json").read_text())["test_best"] == pytest.approx(first["test_best"])
