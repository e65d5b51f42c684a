"""Every bad input a user can give: one line on stderr naming the file/row/argument, exit code 2, no traceback,
and no pre-existing file in the output folder changed. The CLI runs in-process (fast); a few cases also run
as a real subprocess in test_cli.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import run_cli, write

TINY = ["--model", "tiny-bert", "--max-length", "24", "--n-test", "8", "--max-steps", "1"]
PASSWD = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"


def spec(d: Path, body: str, name: str = "spec.yaml") -> str:
    return write(d, name, body)


def csv_task(d: Path, text: str, kind: str = "regression", name: str = "t.csv", cols: str = "a") -> list[str]:
    return ["--task", write(d, name, text), "--text-columns", cols, "--label-column", "y", "--task-type", kind]


def cr_with_empty_neg(d: Path, data_dir: Path) -> list[str]:
    root = d / "data"
    (root / "cr").mkdir(parents=True)
    shutil.copy(data_dir / "cr" / "custrev.pos", root / "cr" / "custrev.pos")
    (root / "cr" / "custrev.neg").write_text("\n\n")
    return ["--task", "cr", "--data-dir", str(root)]


OK_CSV = "a,y\n" + "".join(f"sentence number {i},{i % 5}\n" for i in range(30))

# (id, args(tmp, data_dir) -> list, expected substring of the one error line)
CASES = [
    # ---- fine-tuning flags (FinetuneConfig validation names the flag)
    ("lr-zero", lambda d, _: ["finetune", "--lr", "0"], "--lr"),
    ("lr-nan", lambda d, _: ["finetune", "--lr", "nan"], "--lr"),
    ("lr-inf", lambda d, _: ["finetune", "--lr", "inf"], "--lr"),
    ("lr-negative", lambda d, _: ["finetune", "--lr", "-1"], "--lr"),
    ("lr-text", lambda d, _: ["finetune", "--lr", "fast"], "--lr"),
    ("batch-zero", lambda d, _: ["finetune", "--batch-size", "0"], "--batch-size"),
    ("grad-accum-zero", lambda d, _: ["finetune", "--grad-accum", "0"], "--grad-accum"),
    ("eval-every-zero", lambda d, _: ["finetune", "--eval-every", "0"], "--eval-every"),
    ("n-test-zero", lambda d, _: ["finetune", "--n-test", "0"], "--n-test"),
    ("max-steps-zero", lambda d, _: ["finetune", "--max-steps", "0"], "--max-steps"),
    ("patience-zero", lambda d, _: ["finetune", "--patience", "0"], "--patience"),
    ("min-delta-negative", lambda d, _: ["finetune", "--min-delta", "-0.1"], "--min-delta"),
    ("val-zero", lambda d, _: ["finetune", "--val", "0"], "--val"),
    ("val-fraction-too-big", lambda d, _: ["finetune", "--val", "1.5"], "--val"),
    ("val-negative-count", lambda d, _: ["finetune", "--val", "-3"], "--val"),
    ("setting-unknown", lambda d, _: ["finetune", "--setting", "sideways"], "--setting"),
    ("optimizer-unknown", lambda d, _: ["finetune", "--optimizer", "sgdx"], "--optimizer"),
    ("schedule-unknown", lambda d, _: ["finetune", "--schedule", "wavy"], "--schedule"),
    ("sigma-zero", lambda d, _: ["finetune", "--sigma", "0"], "--sigma"),
    ("sigma-nan", lambda d, _: ["finetune", "--sigma", "nan"], "--sigma"),
    ("drift-every-zero", lambda d, _: ["finetune", "--drift-every", "0"], "--drift-every"),
    ("drift-n-one", lambda d, _: ["finetune", "--drift-n", "1"], "--drift-n"),
    ("layers-zero", lambda d, _: ["finetune", "--setting", "head", "--layers", "0"], "--layers"),
    ("layers-with-full", lambda d, _: ["finetune", "--setting", "full", "--layers", "1"], "--layers"),
    ("layers-too-many", lambda d, _: ["finetune", *TINY, "--setting", "head", "--layers", "9"], "--layers"),
    ("warmup-past-max-steps", lambda d, _: ["finetune", "--warmup-steps", "300"], "--warmup-steps"),
    ("n-train-one", lambda d, _: ["finetune", "--n-train", "1"], "--n-train"),
    ("n-train-too-many", lambda d, _: ["finetune", *TINY, "--task", "rte", "--n-train", "999999"], "--n-train"),
    ("max-length-one", lambda d, _: ["finetune", "--max-length", "1"], "--max-length"),
    ("max-length-past-positions", lambda d, _: ["finetune", "--model", "tiny-bert", "--max-length", "1000"],
     "--max-length"),
    ("monitor-not-a-task-metric", lambda d, _: ["finetune", *TINY, "--monitor", "accuracy"], "--monitor"),
    ("monitor-typo", lambda d, _: ["finetune", *TINY, "--task", "rte", "--monitor", "acuracy"], "--monitor"),
    ("mode-unknown", lambda d, _: ["finetune", "--mode", "sideways"], "--mode"),
    ("device-unknown", lambda d, _: ["finetune", "--device", "tpu"], "--device"),
    ("pooling-unknown", lambda d, _: ["finetune", "--pooling", "max"], "--pooling"),
    ("seed-negative", lambda d, _: ["finetune", "--seed", "-1"], "--seed"),
    ("unknown-flag", lambda d, _: ["finetune", "--learning-rate", "1"], "--learning-rate"),
    ("unknown-command", lambda d, _: ["finetuen"], "finetuen"),
    ("unknown-task", lambda d, _: ["finetune", *TINY, "--task", "nope"], "unknown task 'nope'"),
    ("unknown-model", lambda d, _: ["finetune", "--model", "nope"], "unknown model 'nope'"),
    ("model-dir-without-config", lambda d, _: ["finetune", "--model", str(d / "empty-model") + "/"],
     "empty-model"),
    ("gguf-garbage", lambda d, _: ["finetune", "--model", write(d, "other/model.gguf", b"\x00" * 100)], "model.gguf"),
    ("data-dir-missing", lambda d, _: ["finetune", *TINY, "--data-dir", str(d / "nowhere")], "nowhere"),
    # ---- config files
    ("config-missing", lambda d, _: ["finetune", "--config", str(d / "missing.yaml")], "missing.yaml"),
    ("config-bad-yaml", lambda d, _: ["finetune", "--config", write(d, "c.yaml", "lr: [1,\n")], "c.yaml"),
    ("config-unknown-key", lambda d, _: ["finetune", "--config", write(d, "c.yaml", "learning_rate: 1\n")],
     "learning_rate"),
    ("config-a-list", lambda d, _: ["finetune", "--config", write(d, "c.yaml", "- lr\n- 1\n")], "c.yaml"),
    ("config-bad-value", lambda d, _: ["finetune", "--config", write(d, "c.yaml", "lr: -2\n")], "lr"),
    # ---- task files and spec files
    ("csv-duplicate-columns", lambda d, _: ["finetune", *TINY, *csv_task(d, "a,a,y\nx,z,1\n" * 3)], "duplicate column"),
    ("csv-not-a-number", lambda d, _: ["finetune", *TINY, *csv_task(d, OK_CSV + "bad row,oops\n")], "t.csv:32"),
    ("csv-nan-score", lambda d, _: ["finetune", *TINY, *csv_task(d, OK_CSV + "bad row,nan\n")], "t.csv:32"),
    ("csv-empty-text", lambda d, _: ["finetune", *TINY, *csv_task(d, OK_CSV + ",3\n")], "t.csv:32"),
    ("csv-missing-column", lambda d, _: ["finetune", *TINY, *csv_task(d, "b,y\nx,1\n")], "missing column 'a'"),
    ("csv-empty-file", lambda d, _: ["finetune", *TINY, *csv_task(d, "")], "empty"),
    ("tsv-wrong-field-count", lambda d, _: ["finetune", *TINY, *csv_task(d, "a\ty\nx\t1\ty\tz\n", name="t.tsv")],
     "t.tsv:2"),
    ("csv-not-utf8", lambda d, _: ["finetune", *TINY, "--task", write(d, "t.csv", b"a,y\n\xff\xfe,1\n"),
                                   "--text-columns", "a", "--label-column", "y", "--task-type", "regression"], "t.csv"),
    ("csv-labels-1-and-1.0", lambda d, _: ["finetune", *TINY, *csv_task(d, "a,y\n" + "x,1\ny,0\nz,1.0\n" * 8,
                                                                          kind="classification")], "1.0"),
    ("csv-without-column-flags", lambda d, _: ["finetune", *TINY, "--task", write(d, "t.csv", OK_CSV)], "--task"),
    ("jsonl-text-is-list", lambda d, _: ["finetune", *TINY, *csv_task(d, '{"a": ["x"], "y": 1}\n', name="t.jsonl")],
     "t.jsonl:1"),
    ("jsonl-text-is-dict", lambda d, _: ["finetune", *TINY, *csv_task(d, '{"a": {"k": 1}, "y": 1}\n', name="t.jsonl")],
     "t.jsonl:1"),
    ("jsonl-invalid-json", lambda d, _: ["finetune", *TINY, *csv_task(d, '{"a": "x", "y": 1}\n{oops\n',
                                                                        name="t.jsonl")], "t.jsonl:2"),
    ("data-path-is-directory", lambda d, _: ["finetune", *TINY, "--task", spec(d, "name: t\ntype: regression\n"
                                             "files: {train: sub}\ntext_columns: [a]\nlabel_column: y\n"), ],
     "sub"),
    ("spec-files-as-list", lambda d, _: ["finetune", *TINY, "--task", spec(d, "name: t\ntype: regression\n"
                                         "files: [a.csv]\ntext_columns: [a]\nlabel_column: y\n")], "files"),
    ("spec-unknown-key", lambda d, _: ["finetune", *TINY, "--task", spec(d, "name: t\ntype: regression\n"
                                       "files: {train: a.csv}\ntext_columns: [a]\nlabel_column: y\nlabel_col: z\n")],
     "label_col"),
    ("spec-missing-key", lambda d, _: ["finetune", *TINY, "--task", spec(d, "name: t\ntype: regression\n"
                                       "files: {train: a.csv}\ntext_columns: [a]\n")], "label_column"),
    ("spec-not-a-mapping", lambda d, _: ["finetune", *TINY, "--task", spec(d, "- a\n- b\n")], "spec.yaml"),
    ("spec-bad-yaml", lambda d, _: ["finetune", *TINY, "--task", spec(d, "name: [t\n")], "spec.yaml"),
    ("spec-bad-type", lambda d, _: ["finetune", *TINY, "--task", spec(d, "name: t\ntype: ranking\n"
                                    "files: {train: a.csv}\ntext_columns: [a]\nlabel_column: y\n")], "spec.yaml"),
    ("spec-file-missing", lambda d, _: ["finetune", *TINY, "--task", spec(d, "name: t\ntype: regression\n"
                                        "files: {train: gone.csv}\ntext_columns: [a]\nlabel_column: y\n")], "gone.csv"),
    ("spec-points-at-system-file", lambda d, _: ["finetune", *TINY, "--task", spec(d, (
        "name: t\ntype: regression\nfiles: {train: " + write(d, "passwd.csv", PASSWD) + "}\ntext_columns: [a]\n"
        "label_column: y\n"))], "passwd.csv"),
    ("builtin-class-file-empty", lambda d, dd: ["finetune", *TINY, *cr_with_empty_neg(d, dd)], "custrev.neg"),
    # ---- run folders
    ("out-is-a-file", lambda d, _: ["finetune", *TINY, "--out", write(d, "file.txt", "x")], "file.txt"),
    ("out-has-foreign-files", lambda d, _: ["finetune", *TINY, "--out", str(d / "out")], "did not write"),
    ("curve-sizes-text", lambda d, _: ["curve", *TINY, "--sizes", "a,b"], "--sizes"),
    ("curve-sizes-one", lambda d, _: ["curve", *TINY, "--sizes", "1"], "--sizes"),
    ("curve-seeds-zero", lambda d, _: ["curve", *TINY, "--seeds", "0"], "--seeds"),
    ("curve-unknown-task", lambda d, _: ["curve", *TINY, "--tasks", "stsb,nope"], "nope"),
    ("curve-foreign-out", lambda d, _: ["curve", *TINY, "--sizes", "8", "--out", str(d / "out")], "did not write"),
]


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case, tmp_path, data_dir, capsys, monkeypatch):
    name, make_args, expected = case
    (tmp_path / "empty-model").mkdir()
    (tmp_path / "sub").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file\n")
    before = snapshot(out)
    args = make_args(tmp_path, data_dir)
    if "--out" not in args:
        args += ["--out", str(out)]
    monkeypatch.setenv("NTKFT_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("ntkft: error")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0], lines[0]
    assert "root:x:0:0" not in err  # never echo a foreign file's contents
    assert snapshot(out) == before


def test_at_least_sixty_cases():
    assert len(CASES) >= 60
