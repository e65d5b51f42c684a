"""A careless or hostile user, over every command: each case exits 2 with exactly one line on stderr (no
traceback) and changes nothing outside the run's own files (every file that was there is byte-identical, and new
files appear only inside the case's --out). The CLI runs in-process; cases that need a kernel or a run share
ones made once per module."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import npy, run_cli
from conftest import write as w

TINY = ["--model", "tiny-bert", "--max-length", "24", "--n-train", "16", "--n-test", "8", "--max-steps", "1"]
CTINY = [a for a in TINY if a not in ("--n-train", "16")]  # curve draws its own training sizes
K = ["kernel", "--model", "tiny-gpt2", "--task", "rte", "--n", "8", "--max-length", "16"]
WS = ["theory", "width-sweep", "--widths", "8,16", "--seeds", "1"]
SS = ["theory", "sample-sweep"]
AR = ["theory", "arithmetic", "--widths", "8,16", "--seeds", "1"]


def tv(sub: str) -> list[str]:
    return ["taskvec", sub, "--pretrained", "tiny-bert"]


def truncated(src: Path, d: Path, name: str) -> str:
    b = src.read_bytes()
    return w(d, name, b[: len(b) // 2])


Case = tuple[str, Callable[[Path, Path], list[str]], str]  # (id, args(tmp, fixtures), expected in the error line)

CASES: list[Case] = [
    # ---- kernel
    ("kernel-n-zero", lambda d, f: [*K, "--n", "0"], "--n"),
    ("kernel-n-negative", lambda d, f: [*K, "--n", "-5"], "--n"),
    ("kernel-n-text", lambda d, f: [*K, "--n", "many"], "--n"),
    ("kernel-n-too-many", lambda d, f: [*K, "--n", "10000000"], "--n"),
    ("kernel-max-length-past-positions", lambda d, f: [*K, "--max-length", "100000"], "--max-length"),
    ("kernel-max-length-one", lambda d, f: [*K, "--max-length", "1"], "max-length"),
    ("kernel-seed-text", lambda d, f: [*K, "--seed", "x"], "--seed"),
    ("kernel-params-unknown", lambda d, f: [*K, "--params", "weights"], "parameter group"),
    ("kernel-method-unknown", lambda d, f: [*K, "--method", "magic"], "magic"),
    ("kernel-layers-zero", lambda d, f: [*K, "--layers", "0"], "layers"),
    ("kernel-layers-too-many", lambda d, f: [*K, "--layers", "99"], "layers"),
    ("kernel-split-unknown", lambda d, f: [*K, "--split", "nope"], "nope"),
    ("kernel-memory-nan", lambda d, f: [*K, "--max-memory-gb", "nan"], "--max-memory-gb"),
    ("kernel-memory-negative", lambda d, f: [*K, "--max-memory-gb", "-1"], "--max-memory-gb"),
    ("kernel-memory-zero", lambda d, f: [*K, "--max-memory-gb", "0"], "--max-memory-gb"),
    ("kernel-disk-inf", lambda d, f: [*K, "--max-disk-gb", "inf"], "--max-disk-gb"),
    ("kernel-batch-zero", lambda d, f: [*K, "--batch-size", "0"], "batch"),
    ("kernel-device-unknown", lambda d, f: [*K, "--device", "tpu"], "device"),
    ("kernel-device-cuda-missing", lambda d, f: [*K, "--device", "cuda:7"], "cuda"),
    ("kernel-accumulate-unknown", lambda d, f: [*K, "--accumulate", "gpu"], "accumulate"),
    ("kernel-sketch-without-dim", lambda d, f: [*K, "--method", "sketch"], "sketch"),
    ("kernel-sketch-dim-zero", lambda d, f: [*K, "--method", "sketch", "--sketch-dim", "0"], "sketch"),
    ("kernel-sketch-dim-other-method", lambda d, f: [*K, "--method", "jacobian", "--sketch-dim", "4"], "sketch"),
    ("kernel-unknown-model", lambda d, f: [*K, "--model", "nope"], "unknown model 'nope'"),
    ("kernel-unknown-task", lambda d, f: [*K, "--task", "nope"], "unknown task 'nope'"),
    ("kernel-model-truncated-weights", lambda d, f: [*K, "--model", str(f / "bad-model")], "damaged"),
    ("kernel-model-dir-without-config", lambda d, f: [*K, "--model", str(d / "empty-model")], "config.json"),
    ("kernel-gguf-garbage", lambda d, f: [*K, "--model", w(d, "in/m.gguf", b"\0" * 64)], "m.gguf"),
    ("kernel-gguf-missing", lambda d, f: [*K, "--model", str(d / "none.gguf")], "none.gguf"),
    ("kernel-csv-without-flags", lambda d, f: [*K, "--task", w(d, "in/t.csv", "a,y\nx,1\n")], "--text-columns"),
    ("kernel-csv-bad-score", lambda d, f: [*K, "--task", w(d, "in/t.csv", "a,y\nx,1\nz,oops\n"), "--text-columns",
                                           "a", "--label-column", "y", "--task-type", "regression"], "t.csv:3"),
    ("kernel-empty-class", lambda d, f: [*K, "--task", f / "spec3.yaml"], "neutral"),
    ("kernel-out-is-file", lambda d, f: [*K, "--out", w(d, "in/file.txt", "x")], "file.txt"),
    ("kernel-out-under-proc", lambda d, f: [*K, "--out", "/proc/self/ntkft-x"], "/proc/self/ntkft-x"),
    ("kernel-out-foreign-files", lambda d, f: [*K, "--out", str(d / "out")], "did not write"),
    ("kernel-other-run-without-overwrite", lambda d, f: [*K, "--n", "12", "--out", str(f / "k")], "--overwrite"),
    ("kernel-unknown-flag", lambda d, f: [*K, "--samples-count", "3"], "--samples-count"),
    ("kernel-distributed-without-torchrun", lambda d, f: ["kernel-distributed", "--model", "tiny-gpt2", "--samples",
                                                          "4", "--out", str(d / "kd")], "torchrun"),
    ("kernel-distributed-memory-nan", lambda d, f: ["kernel-distributed", "--max-memory-gb", "nan"],
     "--max-memory-gb"),
    # ---- spectrum
    ("spectrum-no-input", lambda d, f: ["spectrum"], "kernel"),
    ("spectrum-file-missing", lambda d, f: ["spectrum", str(d / "none.safetensors")], "none.safetensors"),
    ("spectrum-folder-without-kernel", lambda d, f: ["spectrum", str(d / "empty-model")], "empty-model"),
    ("spectrum-truncated-kernel", lambda d, f: ["spectrum", truncated(f / "k" / "kernel.safetensors", d,
                                                                      "in/cut.safetensors")], "cut.safetensors"),
    ("spectrum-npy-not-square", lambda d, f: ["spectrum", npy(d, "k1.npy", [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])],
     "k1.npy"),
    ("spectrum-npy-nan", lambda d, f: ["spectrum", npy(d, "k2.npy", [[1.0, float("nan")], [0.0, 1.0]])], "k2.npy"),
    ("spectrum-npy-1d", lambda d, f: ["spectrum", npy(d, "k3.npy", [1.0, 2.0])], "k3.npy"),
    ("spectrum-npy-text", lambda d, f: ["spectrum", npy(d, "k4.npy", [["a", "b"], ["c", "d"]])], "k4.npy"),
    ("spectrum-garbage-npy", lambda d, f: ["spectrum", w(d, "in/k5.npy", b"not numpy")], "k5.npy"),
    ("spectrum-garbage-pt", lambda d, f: ["spectrum", w(d, "in/k6.pt", b"not torch")], "k6.pt"),
    ("spectrum-wrong-suffix", lambda d, f: ["spectrum", w(d, "in/k.txt", "1 2\n3 4\n")], "k.txt"),
    ("spectrum-level-one", lambda d, f: ["spectrum", str(f / "k"), "--level", "1"], "--level"),
    ("spectrum-level-nan", lambda d, f: ["spectrum", str(f / "k"), "--level", "nan"], "--level"),
    ("spectrum-ci-draws-negative", lambda d, f: ["spectrum", str(f / "k"), "--ci-draws", "-1"], "--ci-draws"),
    ("spectrum-seed-negative", lambda d, f: ["spectrum", str(f / "k"), "--seed", "-3"], "--seed"),
    ("spectrum-model-without-task", lambda d, f: ["spectrum", "--model", "tiny-bert"], "--task"),
    ("spectrum-model-and-files", lambda d, f: ["spectrum", str(f / "k"), "--model", "tiny-bert", "--task", "rte"],
     "--model"),
    ("spectrum-n-three", lambda d, f: ["spectrum", "--model", "tiny-bert", "--task", "rte", "--n", "3"], "--n"),
    ("spectrum-draws-zero", lambda d, f: ["spectrum", "--model", "tiny-bert", "--task", "rte", "--draws", "0"],
     "--draws"),
    ("spectrum-unknown-task", lambda d, f: ["spectrum", "--model", "tiny-bert", "--task", "rte,nope", "--n", "8"],
     "nope"),
    ("spectrum-config-unknown-key", lambda d, f: ["spectrum", str(f / "k"), "--config", w(d, "in/c.yaml", "lvl: 1\n")],
     "lvl"),
    # ---- stop
    ("stop-file-missing", lambda d, f: ["stop", str(d / "none")], "not found"),
    ("stop-step-zero", lambda d, f: ["stop", str(f / "k"), "--step", "0"], "--step"),
    ("stop-step-nan", lambda d, f: ["stop", str(f / "k"), "--step", "nan"], "--step"),
    ("stop-step-inf", lambda d, f: ["stop", str(f / "k"), "--step", "inf"], "--step"),
    ("stop-sigma-negative", lambda d, f: ["stop", str(f / "k"), "--sigma", "-1"], "--sigma"),
    ("stop-radius-zero", lambda d, f: ["stop", str(f / "k"), "--radius", "0"], "--radius"),
    ("stop-batch-zero", lambda d, f: ["stop", str(f / "k"), "--batch-size", "0"], "--batch-size"),
    ("stop-lr-nan", lambda d, f: ["stop", str(f / "k"), "--lr", "nan"], "--lr"),
    ("stop-lr-negative", lambda d, f: ["stop", str(f / "k"), "--lr", "-0.01"], "--lr"),
    ("tasks-data-dir-is-a-file", lambda d, f: ["tasks", "--data-dir", w(d, "in/notadir", "x")], "notadir"),
    ("select-unknown-model", lambda d, f: ["select", "--models", "tiny-bert,no-such-model", "--task", "stsb",
                                           "--out", str(d / "o")], "no-such-model"),
    ("select-bad-cut", lambda d, f: ["select", "--models", "tiny-bert@x", "--task", "stsb", "--out", str(d / "o")],
     "tiny-bert@x"),
    ("select-duplicate", lambda d, f: ["select", "--models", "tiny-bert,tiny-bert", "--task", "stsb",
                                       "--out", str(d / "o")], "tiny-bert"),
    ("select-n-zero", lambda d, f: ["select", "--models", "tiny-bert", "--task", "stsb", "--n", "0",
                                    "--out", str(d / "o")], "--n"),
    ("select-target-nan", lambda d, f: ["select", "--models", "tiny-bert", "--task", "stsb", "--target-error", "nan",
                                        "--out", str(d / "o")], "--target-error"),
    ("select-unknown-task", lambda d, f: ["select", "--models", "tiny-bert", "--task", "nosuchtask",
                                          "--out", str(d / "o")], "nosuchtask"),
    ("efficiency-missing-config", lambda d, f: ["efficiency", "--config", str(d / "none.yaml"), "--out", str(d / "o")],
     "none.yaml"),
    ("efficiency-garbage-config", lambda d, f: ["efficiency", "--config", w(d, "in/e.yaml", "model: [unclosed"),
                                                "--out", str(d / "o")], "e.yaml"),
    ("efficiency-pool-zero", lambda d, f: ["efficiency", "--config", w(d, "in/e2.yaml", "model: tiny-bert\n"),
                                           "--pool", "0", "--out", str(d / "o")], "pool"),
    ("stop-kernel-without-labels", lambda d, f: ["stop", npy(d, "k7.npy", [[2.0, 1.0], [1.0, 2.0]])], "labels"),
    ("stop-truncated-kernel", lambda d, f: ["stop", truncated(f / "k" / "kernel.safetensors", d,
                                                              "in/cut2.safetensors")], "cut2.safetensors"),
    ("stop-out-foreign", lambda d, f: ["stop", str(f / "k"), "--out", str(d / "out")], "did not write"),
    # ---- finetune
    ("ft-lr-zero", lambda d, f: ["finetune", "--lr", "0"], "--lr"),
    ("ft-lr-nan", lambda d, f: ["finetune", "--lr", "nan"], "--lr"),
    ("ft-lr-text", lambda d, f: ["finetune", "--lr", "fast"], "--lr"),
    ("ft-dropout-one", lambda d, f: ["finetune", "--dropout", "1"], "--dropout"),
    ("ft-dropout-negative", lambda d, f: ["finetune", "--dropout", "-0.1"], "--dropout"),
    ("ft-dropout-nan", lambda d, f: ["finetune", "--dropout", "nan"], "--dropout"),
    ("ft-batch-zero", lambda d, f: ["finetune", "--batch-size", "0"], "--batch-size"),
    ("ft-max-steps-zero", lambda d, f: ["finetune", "--max-steps", "0"], "--max-steps"),
    ("ft-warmup-negative", lambda d, f: ["finetune", "--warmup-steps", "-1"], "--warmup-steps"),
    ("ft-val-one", lambda d, f: ["finetune", "--val", "1.0"], "--val"),
    ("ft-setting-unknown", lambda d, f: ["finetune", "--setting", "sideways"], "--setting"),
    ("ft-optimizer-unknown", lambda d, f: ["finetune", "--optimizer", "sgdx"], "--optimizer"),
    ("ft-schedule-unknown", lambda d, f: ["finetune", "--schedule", "wavy"], "--schedule"),
    ("ft-sigma-inf", lambda d, f: ["finetune", "--sigma", "inf"], "--sigma"),
    ("ft-weight-decay-negative", lambda d, f: ["finetune", "--weight-decay", "-1"], "--weight-decay"),
    ("ft-ridge-nan", lambda d, f: ["finetune", "--ridge", "nan"], "--ridge"),
    ("ft-layers-with-linearized", lambda d, f: ["finetune", "--setting", "linearized", "--layers", "1"], "--layers"),
    ("ft-center-output-with-save", lambda d, f: ["finetune", "--center-output"], "--center-output"),
    ("ft-bf16-on-cpu", lambda d, f: ["finetune", *TINY, "--bf16", "--device", "cpu"], "bf16"),
    ("ft-cuda-missing", lambda d, f: ["finetune", *TINY, "--device", "cuda"], "cuda"),
    ("ft-max-length-past-positions", lambda d, f: ["finetune", *TINY, "--max-length", "100000"], "--max-length"),
    ("ft-n-train-too-many", lambda d, f: ["finetune", *TINY, "--task", "rte", "--n-train", "9999999"], "--n-train"),
    ("ft-monitor-typo", lambda d, f: ["finetune", *TINY, "--task", "rte", "--monitor", "acuracy"], "--monitor"),
    ("ft-unknown-model", lambda d, f: ["finetune", "--model", "nope"], "unknown model 'nope'"),
    ("ft-model-truncated-weights", lambda d, f: ["finetune", *TINY, "--model", str(f / "bad-model")], "damaged"),
    ("ft-empty-class", lambda d, f: ["finetune", *TINY, "--task", str(f / "spec3.yaml")], "neutral"),
    ("ft-config-missing", lambda d, f: ["finetune", "--config", str(d / "missing.yaml")], "missing.yaml"),
    ("ft-config-bad-yaml", lambda d, f: ["finetune", "--config", w(d, "in/c.yaml", "lr: [1,\n")], "c.yaml"),
    ("ft-config-unknown-key", lambda d, f: ["finetune", "--config", w(d, "in/c.yaml", "learning_rate: 1\n")],
     "learning_rate"),
    ("ft-out-is-file", lambda d, f: ["finetune", *TINY, "--out", w(d, "in/file.txt", "x")], "file.txt"),
    ("ft-out-under-proc", lambda d, f: ["finetune", *TINY, "--out", "/proc/self/ntkft-y"], "/proc/self/ntkft-y"),
    ("ft-out-foreign", lambda d, f: ["finetune", *TINY, "--out", str(d / "out")], "did not write"),
    ("ft-out-holds-kernel", lambda d, f: ["finetune", *TINY, "--out", str(f / "k")], "another kernel run"),
    # ---- curve
    ("curve-sizes-text", lambda d, f: ["curve", *CTINY, "--sizes", "a,b"], "--sizes"),
    ("curve-sizes-one", lambda d, f: ["curve", *CTINY, "--sizes", "1"], "--sizes"),
    ("curve-seeds-zero", lambda d, f: ["curve", *CTINY, "--seeds", "0"], "--seeds"),
    ("curve-unknown-task", lambda d, f: ["curve", *CTINY, "--tasks", "stsb,nope"], "nope"),
    ("curve-lr-negative", lambda d, f: ["curve", "--lr", "-1"], "--lr"),
    ("curve-task-is-not-a-flag", lambda d, f: ["curve", "--task", "stsb"], "--task"),
    ("curve-out-foreign", lambda d, f: ["curve", *CTINY, "--sizes", "8", "--out", str(d / "out")], "did not write"),
    # ---- taskvec
    ("tv-cosine-one-checkpoint", lambda d, f: [*tv("cosine"), "--finetuned",
                                               str(d / "none")], "--finetuned"),
    ("tv-cosine-missing", lambda d, f: [*tv("cosine"), "--finetuned",
                                        f"{d / 'a'},{d / 'b'}"], "a"),
    ("tv-cosine-unknown-pretrained", lambda d, f: ["taskvec", "cosine", "--pretrained", "nope", "--finetuned",
                                                   f"{d / 'a'},{d / 'b'}"], "nope"),
    ("tv-cosine-device", lambda d, f: [*tv("cosine"), "--device", "tpu"], "--device"),
    ("tv-cosine-batch-zero", lambda d, f: [*tv("cosine"), "--batch-size", "0"], "--batch-size"),
    ("tv-cosine-not-a-checkpoint", lambda d, f: [*tv("cosine"), "--finetuned",
                                                 f"{d / 'empty-model'},{d / 'empty-model'}"], "empty-model"),
    ("tv-add-lambdas-out-of-range", lambda d, f: [*tv("add"), "--lambdas", "0,5"], "--lambdas"),
    ("tv-add-lambdas-text", lambda d, f: [*tv("add"), "--lambdas", "a,b"], "--lambdas"),
    ("tv-add-n-val-zero", lambda d, f: [*tv("add"), "--n-val", "0"], "--n-val"),
    ("tv-add-shard-nan", lambda d, f: [*tv("add"), "--max-shard-mb", "nan"], "--max-shard-mb"),
    ("tv-add-one-checkpoint", lambda d, f: [*tv("add"), "--finetuned",
                                            str(d / "a")], "finetuned"),
    ("tv-negate-threshold-two", lambda d, f: [*tv("negate"), "--target", "x", "--control", "rte", "--threshold", "2"],
     "--threshold"),
    ("tv-negate-no-target", lambda d, f: tv("negate"), "target"),
    ("tv-negate-missing-target", lambda d, f: [*tv("negate"), "--target",
                                               str(d / "gone"), "--control", "rte"], "gone"),
    ("tv-disentangle-three", lambda d, f: [*tv("disentangle"), "--finetuned",
                                           f"{d / 'a'},{d / 'b'},{d / 'c'}"], "--finetuned"),
    ("tv-disentangle-coefficients", lambda d, f: [*tv("disentangle"), "--finetuned", "a,b", "--coefficients", "0,9"],
     "--coefficients"),
    ("tv-orthogonality-method", lambda d, f: [*tv("orthogonality"), "--tasks", "rte,stsb", "--method", "magic"], "magic"),
    ("tv-orthogonality-sigma", lambda d, f: [*tv("orthogonality"), "--tasks", "rte,stsb", "--sigma", "0"], "--sigma"),
    ("tv-orthogonality-one-task", lambda d, f: [*tv("orthogonality"), "--tasks",
                                                "rte"], "tasks"),
    ("tv-orthogonality-unknown-task", lambda d, f: ["taskvec", "orthogonality", "--pretrained", "tiny-bert",
                                                    "--tasks", "rte,nope", "--n", "4"], "nope"),
    ("tv-unknown-subcommand", lambda d, f: ["taskvec", "multiply"], "multiply"),
    # ---- theory
    ("ws-widths-zero", lambda d, f: [*WS, "--widths", "0,8"], "widths"),
    ("ws-widths-text", lambda d, f: [*WS, "--widths", "a,b"], "widths"),
    ("ws-seeds-zero", lambda d, f: [*WS, "--seeds", "0"], "--seeds"),
    ("ws-eta-nan", lambda d, f: [*WS, "--eta0", "nan"], "--eta0"),
    ("ws-heads-zero", lambda d, f: [*WS, "--heads", "0"], "--heads"),
    ("ws-embed-odd", lambda d, f: [*WS, "--embed-dim", "7"], "embed"),
    ("ws-noise-negative", lambda d, f: [*WS, "--noise", "-1"], "--noise"),
    ("ws-parameterisation", lambda d, f: [*WS, "--parameterisation", "mup"], "parameterisation"),
    ("ws-threads-zero", lambda d, f: [*WS, "--threads", "0"], "threads"),
    ("ws-config-list", lambda d, f: [*WS, "--config", w(d, "in/c.yaml", "- 1\n")], "c.yaml"),
    ("ws-out-foreign", lambda d, f: [*WS, "--out", str(d / "out")], "did not write"),
    ("ss-n-target-zero", lambda d, f: [*SS, "--n-target", "0"], "n"),
    ("ss-sigma-q-negative", lambda d, f: [*SS, "--sigma-q", "-1"], "--sigma-q"),
    ("ar-shift-nan", lambda d, f: [*AR, "--shift", "nan"], "--shift"),
    ("ar-seeds-text", lambda d, f: [*AR, "--seeds", "two"], "--seeds"),
    ("theory-unknown-subcommand", lambda d, f: ["theory", "depth-sweep"], "depth-sweep"),
    # ---- reproduce, report, demo, listings
    ("repro-stages-unknown", lambda d, f: ["reproduce", "--stages", "9"], "stages"),
    ("repro-sizes-text", lambda d, f: ["reproduce", "--sizes", "a"], "sizes"),
    ("repro-draws-zero", lambda d, f: ["reproduce", "--draws", "0"], "--draws"),
    ("repro-val-two", lambda d, f: ["reproduce", "--val", "2"], "--val"),
    ("repro-workers-zero", lambda d, f: ["reproduce", "--workers", "0"], "--workers"),
    ("repro-unknown-model", lambda d, f: ["reproduce", "--models", "nope", "--stages", "1", "--spectrum-tasks", "rte",
                                          "--kernel-n", "8", "--draws", "1"], "nope"),
    ("repro-config-unknown-key", lambda d, f: ["reproduce", "--config", w(d, "in/r.yaml", "stagez: [1]\n")],
     "stagez"),
    ("repro-out-foreign", lambda d, f: ["reproduce", "--out", str(d / "out"), "--models", "tiny-bert", "--stages", "1",
                                        "--spectrum-tasks", "rte", "--kernel-n", "8", "--draws", "1"], "did not write"),
    ("report-not-a-run", lambda d, f: ["report", str(d / "out")], "out"),
    ("report-missing", lambda d, f: ["report", str(d / "none")], "none"),
    ("report-a-kernel-run", lambda d, f: ["report", str(f / "k")], "reproduc"),
    ("demo-unknown-model", lambda d, f: ["demo", "--model", "nope", "--out", str(d / "demo")], "nope"),
    ("demo-n-zero", lambda d, f: ["demo", "--model", "tiny-bert", "--n", "0", "--out", str(d / "demo")], "n"),
    ("unknown-command", lambda d, f: ["finetuen"], "finetuen"),
    ("models-extra-argument", lambda d, f: ["models", "extra"], "extra"),
    ("tasks-extra-argument", lambda d, f: ["tasks", "stsb"], "stsb"),
]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "cache" not in p.relative_to(root).parts}


def _make_fixtures(root: Path) -> None:
    from ntkft.models import load_model
    from ntkft.pipeline import compute_kernel_file

    compute_kernel_file("tiny-gpt2", "rte", n=8, max_length=16, out=root / "k", progress=False)
    m = load_model("tiny-bert")
    m.backbone.save_pretrained(root / "bad-model")
    m.tokenizer.save_pretrained(root / "bad-model")
    st = root / "bad-model" / "model.safetensors"
    st.write_bytes(st.read_bytes()[:2000])
    (root / "t3.csv").write_text("a,y\n" + "".join(f"row {i},{'pos' if i % 2 else 'neg'}\n" for i in range(12)))
    (root / "spec3.yaml").write_text("name: t3\ntype: classification\nfiles: {train: t3.csv}\ntext_columns: [a]\n"
                                     "label_column: y\nlabels: [pos, neg, neutral]\n")


@pytest.fixture(scope="module")
def made(tmp_path_factory, data_dir) -> Path:
    """Made once: a finished tiny kernel run (`k`), a model folder with truncated weights, a task spec declaring a
    class without training rows."""
    root = tmp_path_factory.mktemp("hostile-fixtures")
    _make_fixtures(root)
    return root


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(case: Case, tmp_path: Path, made: Path, capsys, monkeypatch):
    name, make_args, expected = case
    (tmp_path / "empty-model").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("a user's file\n")
    monkeypatch.setenv("NTKFT_CACHE", str(tmp_path / "cache"))
    args = [str(a) for a in make_args(tmp_path, made)]
    if "--out" not in args and args[0] not in ("models", "tasks", "report", "spectrum") + ("finetuen",):
        args += ["--out", str(tmp_path / "run")]
    out = Path(args[args.index("--out") + 1]) if "--out" in args else None
    before, fixed = snapshot(tmp_path), snapshot(made)
    code, _, err = run_cli(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip() and "%|" not in ln  # progress bars and log lines aside
             and not ln.startswith(("INFO ", "WARNING "))]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("ntkft: error") and "Traceback" not in err, err
    assert expected in lines[0], lines[0]
    after = snapshot(tmp_path)
    assert all(after.get(k) == v for k, v in before.items()), "a file that was there changed"
    new = [k for k in after if k not in before]
    assert out is not None and all((tmp_path / k).is_relative_to(out) for k in new) or not new, new
    assert snapshot(made) == fixed


def test_flag_named_as_typed(monkeypatch):
    """Under torchrun each rank reports `--samples` when that is what the user typed (issue 29, row 10)."""
    from ntkft.cli import _as_typed, _register

    _register()
    monkeypatch.setattr(sys, "argv", ["ntkft", "kernel-distributed", "--samples", "0"])
    assert _as_typed("--n: must be >= 1") == "--samples: must be >= 1"
    monkeypatch.setattr(sys, "argv", ["ntkft", "kernel-distributed", "--n", "0"])
    assert _as_typed("--n: must be >= 1") == "--n: must be >= 1"


def test_at_least_a_hundred_cases_over_every_command(tmp_path, made):
    assert len(CASES) >= 100
    from ntkft.cli import _register, app

    _register()
    import typer.main

    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    covered = {make(tmp_path, made)[0] for _, make, _ in CASES}
    assert commands - {"models", "tasks"} <= covered | {"finetuen"}, commands - covered
    assert len({c[0] for c in CASES}) == len(CASES)
