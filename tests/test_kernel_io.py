"""Any kernel file a user has, checked whole; `ntkft spectrum` / `ntkft stop` on them; bad files and flags as one
line on stderr with exit code 2 (the CLI runs in-process, as in test_bad_inputs.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from conftest import npy, run_cli
from conftest import write as text
from ntkft.errors import KernelError
from ntkft.kernel.io import load_kernel


def bridge(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(0, 1, n)
    return np.minimum(x[:, None], x[None, :]) - np.outer(x, x)


def targets(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).uniform(0, 1, n)
    return np.sin(6 * x) + 0.1 * np.random.default_rng(seed + 1).standard_normal(n)


def st(d: Path, name: str, tensors: dict, meta: dict | None = None) -> str:
    p = d / name
    save_file(tensors, str(p), metadata={"meta": json.dumps(meta)} if meta is not None else None)
    return str(p)


def pt(d: Path, name: str, obj) -> str:
    p = d / name
    torch.save(obj, p)
    return str(p)


K = bridge(24)
NAN_K = K.copy()
NAN_K[3, 4] = NAN_K[4, 3] = np.nan
CLS = {"task_type": "classification", "label_map": ["neg", "pos"]}


def test_every_format_reads_the_same_kernel(tmp_path):
    y = targets(24)
    paths = {
        "npy": npy(tmp_path, "k.npy", K),
        "safetensors": st(tmp_path, "k.safetensors", {"K": K, "labels": y}),
        "npz": str(tmp_path / "k.npz"),
        "pt": pt(tmp_path, "k.pt", torch.tensor(K)),
        "pt-dict": pt(tmp_path, "d.pt", {"K": torch.tensor(K), "outputs": torch.zeros(24)}),
        "f16": st(tmp_path, "h.safetensors", {"K": K.astype(np.float16)}),
        "int": npy(tmp_path, "i.npy", np.rint(K * 1000).astype(np.int32)),
    }
    np.savez(paths["npz"], K=K, labels=y)
    for fmt, p in paths.items():
        lk = load_kernel(p)
        assert lk.K.dtype == np.float64 and lk.K.shape == (24, 24), fmt
        scale = 1000 if fmt == "int" else 1
        assert np.abs(lk.K / scale - K).max() < (1e-3 if fmt in ("f16", "int") else 1e-15), fmt
    assert load_kernel(paths["safetensors"]).labels.tolist() == pytest.approx(y.tolist())
    assert load_kernel(paths["f16"]).precision == 2.0 ** -11 and load_kernel(paths["npy"]).precision == 2.0 ** -53
    lk = load_kernel(st(tmp_path, "c.safetensors", {"K": K, "labels": np.arange(24) % 2}, CLS))
    assert lk.task_type == "classification" and lk.targets().tolist() == [-1.0, 1.0] * 12


# (id, make(tmp) -> path, expected substring of the error)
BAD_FILES = [
    ("missing", lambda d: str(d / "nope.npy"), "kernel file not found"),
    ("folder-without-kernel", lambda d: str(d), "no kernel.safetensors"),
    ("unknown-suffix", lambda d: text(d, "k.txt", b"1 2\n3 4\n"), "unsupported kernel file type"),
    ("not-safetensors", lambda d: text(d, "k.safetensors", b"not a safetensors file"), "cannot read safetensors"),
    ("safetensors-without-K", lambda d: st(d, "k.safetensors", {"labels": np.zeros(3)}), "no tensor named 'K'"),
    ("not-npy", lambda d: text(d, "k.npy", b"garbage"), "cannot read .npy"),
    ("npz-without-K", lambda d: (np.savez(d / "k.npz", A=K), str(d / "k.npz"))[1], "no array named 'K'"),
    ("pt-pickle", lambda d: pt(d, "k.pt", {"K": torch.tensor(K), "obj": object()}), "weights_only=True"),
    ("pt-list", lambda d: pt(d, "k.pt", [1, 2, 3]), "not a tensor"),
    ("not-square", lambda d: npy(d, "k.npy", np.ones((3, 4))), "square"),
    ("one-d", lambda d: npy(d, "k.npy", np.ones(5)), "square"),
    ("empty", lambda d: npy(d, "k.npy", np.zeros((0, 0))), "empty"),
    ("nan", lambda d: npy(d, "k.npy", NAN_K), "NaN or inf"),
    ("inf", lambda d: npy(d, "k.npy", K + np.where(np.eye(24) > 0, np.inf, 0)), "NaN or inf"),
    ("not-symmetric", lambda d: npy(d, "k.npy", np.triu(K)), "not symmetric"),
    ("complex", lambda d: npy(d, "k.npy", K.astype(np.complex128)), "real numbers"),
    ("bool", lambda d: npy(d, "k.npy", K > 0.1), "real numbers"),
    ("labels-wrong-length", lambda d: st(d, "k.safetensors", {"K": K, "labels": np.zeros(5)}), "labels has shape"),
    ("labels-nan", lambda d: st(d, "k.safetensors", {"K": K, "labels": np.full(24, np.nan)}), "labels contains NaN"),
    ("outputs-inf", lambda d: st(d, "k.safetensors", {"K": K, "outputs": np.full(24, np.inf)}), "outputs contains"),
    ("outputs-matrix", lambda d: st(d, "k.safetensors", {"K": K, "outputs": np.zeros((24, 2))}), "outputs has shape"),
    ("classes-without-map", lambda d: st(d, "k.safetensors", {"K": K, "labels": np.arange(24) % 2},
                                         {"task_type": "classification"}), "without its label map"),
    ("int-labels-unknown", lambda d: st(d, "k.safetensors", {"K": K, "labels": np.arange(24) % 2}),
     "labels are integers"),
    ("label-out-of-map", lambda d: st(d, "k.safetensors", {"K": K, "labels": np.arange(24) % 3}, CLS),
     "not a class index"),
    ("bad-meta-json", lambda d: (save_file({"K": K}, str(d / "k.safetensors"), metadata={"meta": "{oops"}),
                                 str(d / "k.safetensors"))[1], "not valid JSON"),
    ("bad-task-type", lambda d: st(d, "k.safetensors", {"K": K}, {"task_type": "ranking"}), "task_type must be"),
]


@pytest.mark.parametrize("case", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_kernel_files_are_refused_naming_the_file(case, tmp_path):
    _, make, expected = case
    path = make(tmp_path)
    with pytest.raises(KernelError) as e:
        load_kernel(path)
    msg = str(e.value)
    assert expected in msg and "\n" not in msg and msg.startswith(str(Path(path) if not Path(path).is_dir()
                                                                       else path)), msg


# ------------------------------------------------------------------ the CLI, in-process


def good(d: Path) -> str:
    return st(d, "good.safetensors", {"K": K, "labels": targets(24)})


# (id, args(tmp) -> list, expected substring of the one error line)
BAD_FLAGS = [
    ("spectrum-no-input", lambda d: ["spectrum"], "--model"),
    ("spectrum-files-and-model", lambda d: ["spectrum", good(d), "--model", "tiny-bert", "--task", "stsb"], "--model"),
    ("spectrum-model-without-task", lambda d: ["spectrum", "--model", "tiny-bert"], "--task"),
    ("spectrum-draws-of-one-file", lambda d: ["spectrum", good(d), "--draws-of"], "--draws-of"),
    ("spectrum-level-one", lambda d: ["spectrum", good(d), "--level", "1"], "--level"),
    ("spectrum-level-nan", lambda d: ["spectrum", good(d), "--level", "nan"], "--level"),
    ("spectrum-ci-draws-negative", lambda d: ["spectrum", good(d), "--ci-draws", "-1"], "--ci-draws"),
    ("spectrum-draws-zero", lambda d: ["spectrum", "--model", "tiny-bert", "--task", "stsb", "--draws", "0"], "--draws"),
    ("spectrum-n-tiny", lambda d: ["spectrum", "--model", "tiny-bert", "--task", "stsb", "--n", "2"], "--n"),
    ("spectrum-bad-file", lambda d: ["spectrum", good(d), npy(d, "bad.npy", np.triu(K))], "bad.npy: K is not symmetric"),
    ("spectrum-not-psd", lambda d: ["spectrum", npy(d, "neg.npy", -K)], "neg.npy: kernel is not positive"),
    ("spectrum-too-small", lambda d: ["spectrum", npy(d, "tiny.npy", bridge(3))], "tiny.npy: too few positive"),
    ("stop-sigma-nan", lambda d: ["stop", good(d), "--sigma", "nan"], "--sigma"),
    ("stop-sigma-zero", lambda d: ["stop", good(d), "--sigma", "0"], "--sigma"),
    ("stop-sigma-inf", lambda d: ["stop", good(d), "--sigma", "inf"], "--sigma"),
    ("stop-radius-negative", lambda d: ["stop", good(d), "--radius", "-1"], "--radius"),
    ("stop-radius-nan", lambda d: ["stop", good(d), "--radius", "nan"], "--radius"),
    ("stop-step-zero", lambda d: ["stop", good(d), "--step", "0"], "--step"),
    ("stop-step-inf", lambda d: ["stop", good(d), "--step", "inf"], "--step"),
    ("stop-step-too-big", lambda d: ["stop", good(d), "--step", "1e9"], "--step"),
    ("stop-batch-zero", lambda d: ["stop", good(d), "--batch-size", "0"], "--batch-size"),
    ("stop-no-labels", lambda d: ["stop", npy(d, "k.npy", K)], "k.npy: has no labels"),
    ("stop-three-classes", lambda d: ["stop", st(d, "c3.safetensors", {"K": K, "labels": np.arange(24) % 3},
                                                 {"task_type": "classification", "label_map": ["a", "b", "c"]})],
     "3 classes"),
    ("stop-missing-file", lambda d: ["stop", str(d / "none")], "kernel file not found"),
]


@pytest.mark.parametrize("case", BAD_FLAGS, ids=[c[0] for c in BAD_FLAGS])
def test_bad_flags_and_files_one_line_exit_2(case, tmp_path, capsys):
    _, make, expected = case
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file\n")
    args = make(tmp_path) + ["--out", str(out)]
    code, _, err = run_cli(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("ntkft: error")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0], lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written into a foreign folder


def test_several_files_several_rows_and_run_folders(tmp_path, capsys):
    a = npy(tmp_path, "a.npy", bridge(40, 1))
    b = st(tmp_path, "b.safetensors", {"K": bridge(30, 2), "labels": targets(30)})
    c = pt(tmp_path, "c.pt", torch.tensor(bridge(50, 3), dtype=torch.float32))
    out = tmp_path / "s"
    code, stdout, err = run_cli(["spectrum", a, b, c, "--out", str(out), "--ci-draws", "40"], capsys)
    assert code == 0, err
    rep = json.loads((out / "spectrum.json").read_text())
    rows = [k for k in rep if not k.startswith("_")]
    assert rows == ["a", "b", "c"] and [rep[r]["n"] for r in rows] == [40, 30, 50]
    for r in rows:  # every printed interval contains its estimate
        beta = rep[r]["beta"]
        assert beta["low"] <= beta["beta"] <= beta["high"] and abs(beta["beta"] - 1) < 0.25
    assert "draws" not in stdout.split("samples needed")[0].replace("subsampling", "")  # rows, not draws of one
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "spectrum" and meta["status"] == "complete" and len(meta["key"]["kernels"]) == 3
    assert (out / "spectrum.png").stat().st_size > 1000
    # the same command resumes into its own folder; another input is refused without --overwrite
    assert run_cli(["spectrum", a, b, c, "--out", str(out), "--ci-draws", "40"], capsys)[0] == 0
    code, _, err = run_cli(["spectrum", a, "--out", str(out)], capsys)
    assert code == 2 and "--overwrite" in err
    # --draws-of: the same files as draws of one setting
    code, stdout, err = run_cli(["spectrum", a, b, c, "--draws-of", "--out", str(tmp_path / "d"), "--ci-draws", "0"],
                                capsys)
    assert code == 0 and "over 3 draws: beta = " in stdout and "window fit" not in stdout, err  # one beta
    assert len(json.loads((tmp_path / "d" / "spectrum.json").read_text())["_over_draws"]["paper"]["betas"]) == 3


def test_stop_writes_its_own_run_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    y = targets(40)
    f = st(tmp_path, "k.safetensors", {"K": bridge(40), "labels": y, "outputs": np.zeros(40)})
    code, stdout, err = run_cli(["stop", f, "--batch-size", "8"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "runs" / "stop" / "stop.json").read_text())  # a plain file: runs/stop, not beside it
    assert res["t_hat"] >= 0 and "estimated" in res["sigma_source"] and res["epochs"] == res["t_hat"] / 5
    assert json.loads((tmp_path / "runs" / "stop" / "meta.json").read_text())["kind"] == "stop"
    code, stdout, err = run_cli(["stop", f, "--sigma", "0.1", "--radius", "2", "--out", str(tmp_path / "o")], capsys)
    assert code == 0 and json.loads((tmp_path / "o" / "stop.json").read_text())["sigma_source"] == "given", err


def test_real_cli_subprocess_on_a_classification_kernel(tmp_path):
    """One real subprocess: a two-class file with its label map, spectrum then stop."""
    import subprocess

    f = st(tmp_path, "cls.safetensors", {"K": bridge(30), "labels": np.arange(30) % 2}, CLS)
    p = subprocess.run([sys.executable, "-m", "ntkft.cli", "stop", f, "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "neg -> -1, pos -> +1" in json.loads((tmp_path / "o" / "stop.json").read_text())["targets"]
