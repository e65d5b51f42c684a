"""Task specifications: the built-in registry of the paper's tasks and user task spec files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError, DataError

TaskType = Literal["regression", "classification"]


class FileSpec(BaseModel):
    """One file of a split and how to read it."""

    model_config = ConfigDict(extra="forbid")

    path: str  # relative to the data directory (built-in) or to the spec file (user task)
    format: Literal["tsv", "csv", "jsonl", "sts12", "lines", "fasttext", "semrel", "parquet", "table"]
    text_columns: list[str] = Field(default_factory=list)
    label_column: str | None = None
    header: bool = True
    columns: list[str] | None = None  # names for header-less files
    min_fields: bool = False  # allow extra trailing fields (raw STS-B)
    gold: str | None = None  # sts12: the gold-score file beside the input file
    label: str | None = None  # lines: the label every line of this file has
    source: str | None = None  # kept as a column (STS-12 sub-corpus)
    split: str | None = None  # table: the split of the table source `path` (tasks.tables)


class TaskSpec(BaseModel):
    """A task: type, labels, metrics, and the files of each split."""

    model_config = ConfigDict(extra="forbid")

    name: str
    type: TaskType
    pair: bool
    labels: list[str] | None = None  # classification: raw label values, in class-index order
    label_names: list[str] | None = None
    splits: dict[str, list[FileSpec]]
    test_split: str = "test"
    seeded_split: dict[str, float] | None = None  # e.g. {"train": 0.8, "test": 0.2} from the one split "all"
    hub: dict[str, str] | None = None  # Hugging Face dataset fallback
    about: str = ""
    base_dir: str | None = None  # user tasks: files relative to this

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        if self.type == "classification" and self.labels is not None and len(self.labels) < 2:
            raise ValueError("a classification task needs at least 2 labels")
        names = self.split_names()
        if self.test_split not in names:
            raise ValueError(f"test_split '{self.test_split}' is not one of the splits {names}")
        return self

    @property
    def metrics(self) -> list[str]:
        return ["mse", "pearson", "spearman"] if self.type == "regression" else ["accuracy", "f1"]

    def split_names(self) -> list[str]:
        if self.seeded_split:
            return list(self.seeded_split)
        return list(self.splits)


def _tsv(path: str, a: str, b: str | None, label: str, **kw: Any) -> FileSpec:
    return FileSpec(path=path, format="tsv", text_columns=[a] + ([b] if b else []), label_column=label, **kw)


_STS12_TRAIN = ["MSRpar", "MSRvid", "SMTeuroparl"]
_STS12_TEST = ["MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"]


def _sts12(folder: str, names: list[str]) -> list[FileSpec]:
    return [FileSpec(path=f"sts12/{folder}/STS.input.{n}.txt", gold=f"sts12/{folder}/STS.gs.{n}.txt", format="sts12",
                     header=False, source=n.replace("surprise.", "")) for n in names]


BUILTIN: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec(name="stsb", type="regression", pair=True, about="STS Benchmark (GLUE), similarity 0-5",
                 splits={"train": [_tsv("stsb/train.tsv", "sentence1", "sentence2", "score")],
                         "validation": [_tsv("stsb/dev.tsv", "sentence1", "sentence2", "score")],
                         "test": [FileSpec(path="stsb/original/sts-test.tsv", format="tsv", header=False,
                                           columns=["genre", "file", "year", "id", "score", "sentence1", "sentence2"],
                                           text_columns=["sentence1", "sentence2"], label_column="score",
                                           min_fields=True)]},
                 hub={"path": "nyu-mll/glue", "name": "stsb", "a": "sentence1", "b": "sentence2", "label": "label"}),
        TaskSpec(name="sts12", type="regression", pair=True, about="SemEval-2012 STS, 0-5; `source` = sub-corpus",
                 splits={"train": _sts12("STS2012-train", _STS12_TRAIN), "test": _sts12("STS2012-test", _STS12_TEST)},
                 hub={"path": "mteb/sts12-sts", "a": "sentence1", "b": "sentence2", "label": "score"}),
        TaskSpec(name="semrel", type="regression", pair=True, about="SemRel2024 English relatedness, 0-1",
                 splits={s: [FileSpec(path=f"semrel/{f}", format="semrel", text_columns=["Text"], label_column="Score")]
                         for s, f in [("train", "eng_train.csv"), ("validation", "eng_dev_with_labels.csv"),
                                      ("test", "eng_test_with_labels.csv")]},
                 hub={"path": "SemRel/SemRel2024", "name": "eng", "a": "sentence1", "b": "sentence2", "label": "label"}),
        TaskSpec(name="rte", type="classification", pair=True, labels=["not_entailment", "entailment"],
                 about="Recognising Textual Entailment (GLUE); test = GLUE dev (GLUE test has no labels)",
                 splits={"train": [_tsv("rte/train.tsv", "sentence1", "sentence2", "label")],
                         "validation": [_tsv("rte/dev.tsv", "sentence1", "sentence2", "label")]},
                 test_split="validation",
                 hub={"path": "nyu-mll/glue", "name": "rte", "a": "sentence1", "b": "sentence2", "label": "label",
                      "map": "1,0"}),
        TaskSpec(name="mrpc", type="classification", pair=True, labels=["0", "1"],
                 label_names=["not_paraphrase", "paraphrase"],
                 about="Microsoft Research Paraphrase Corpus; test = labelled original MSRP test",
                 splits={"train": [_tsv("mrpc/train.tsv", "#1 String", "#2 String", "Quality")],
                         "validation": [_tsv("mrpc/dev.tsv", "#1 String", "#2 String", "Quality")],
                         "test": [_tsv("mrpc/msr_paraphrase_test.txt", "#1 String", "#2 String", "Quality")]},
                 hub={"path": "nyu-mll/glue", "name": "mrpc", "a": "sentence1", "b": "sentence2", "label": "label"}),
        TaskSpec(name="cr", type="classification", pair=False, labels=["neg", "pos"], label_names=["negative", "positive"],
                 about="Customer reviews (SentEval CR); no official split: seeded stratified 80/20 (seed 0)",
                 splits={"all": [FileSpec(path="cr/custrev.neg", format="lines", label="neg", header=False),
                                 FileSpec(path="cr/custrev.pos", format="lines", label="pos", header=False)]},
                 seeded_split={"train": 0.8, "test": 0.2},
                 hub={"path": "SetFit/SentEval-CR", "a": "text", "label": "label"}),
        TaskSpec(name="sst2", type="classification", pair=False, labels=["0", "1"], label_names=["negative", "positive"],
                 about="Stanford Sentiment Treebank (GLUE); test = GLUE dev (GLUE test has no labels)",
                 splits={"train": [_tsv("sst2/train.tsv", "sentence", None, "label")],
                         "validation": [_tsv("sst2/dev.tsv", "sentence", None, "label")]},
                 test_split="validation",
                 hub={"path": "nyu-mll/glue", "name": "sst2", "a": "sentence", "label": "label"}),
        TaskSpec(name="amazon_polarity", type="classification", pair=False, labels=["1", "2"],
                 label_names=["negative", "positive"], about="Amazon review polarity (5k/1k samples); text = 'title: review'",
                 splits={"train": [FileSpec(path="amazon_polarity/train_small.ft.txt", format="fasttext", header=False)],
                         "test": [FileSpec(path="amazon_polarity/test_small.ft.txt", format="fasttext", header=False)],
                         "test_head": [FileSpec(path="amazon_polarity/test_head1000/test.ft.txt", format="fasttext",
                                                header=False)]},
                 hub={"path": "fancyzhx/amazon_polarity", "a": "content", "label": "label"}),
    ]
}


def load_spec_file(path: str | Path) -> TaskSpec:
    """Read a user task spec (YAML or JSON). Simple form: {name, type, files: {split: path}, text_columns, ...}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: task spec file not found")
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text) if path.suffix in {".yaml", ".yml"} else json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DataError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', None) or 'syntax error'})") from None
    except (UnicodeDecodeError, OSError):
        raise DataError(f"{path}: not a readable UTF-8 text file") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: a task spec must be a mapping of keys ({', '.join(SPEC_KEYS)})")
    unknown = sorted(set(map(str, raw)) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' in task spec (keys: {', '.join(SPEC_KEYS)})")
    missing = [k for k in ("name", "type", "files", "text_columns", "label_column") if k not in raw]
    if missing:
        raise ConfigError(f"{path}: task spec lacks the key '{missing[0]}'")
    if not isinstance(raw["files"], dict):
        raise ConfigError(f"{path}: key 'files' must map split names to files (e.g. train: train.csv), "
                          f"not a {type(raw['files']).__name__}")
    return user_task(base_dir=str(path.parent.resolve()), origin=str(path), **raw)


SPEC_KEYS = ("name", "type", "files", "text_columns", "label_column", "labels", "test_split", "format")


def user_task(name: str, type: Any, files: dict[str, str], text_columns: list[str], label_column: str,
              labels: list[str] | None = None, test_split: str | None = None, base_dir: str = ".",
              origin: str = "task flags", format: str | None = None) -> TaskSpec:
    """Build a TaskSpec for the user's CSV/TSV/JSONL files (one file per split)."""
    try:
        if not files:
            raise ValueError("no files given")
        if isinstance(text_columns, str):
            text_columns = [c.strip() for c in text_columns.split(",") if c.strip()]
        if not 1 <= len(text_columns) <= 2:
            raise ValueError(f"text_columns needs 1 or 2 column names, got {text_columns}")
        splits = {}
        for split, f in files.items():
            fmt: Any = format or {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl",
                                  ".parquet": "parquet"}.get(Path(f).suffix.lower())
            if fmt is None:
                raise ValueError(f"cannot tell the format of '{f}' (use .csv, .tsv, .jsonl or .parquet, or give format)")
            splits[split] = [FileSpec(path=f, format=fmt, text_columns=text_columns, label_column=label_column)]
        if test_split is None:
            test_split = "test" if "test" in splits else ("validation" if "validation" in splits else list(splits)[-1])
        return TaskSpec(name=name, type=type, pair=len(text_columns) == 2, labels=labels, splits=splits,
                        test_split=test_split, base_dir=base_dir, about=f"user task from {origin}")
    except (ValidationError, ValueError, TypeError) as e:
        msg = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
        raise ConfigError(f"{origin}: invalid task spec: {msg}") from e


def table_spec(source: Any, text_columns: list[str] | str | None = None, label_column: str | None = None,
               task_type: str | None = None, name: str | None = None) -> TaskSpec:
    """A task over a table source (tasks.tables): `glue/NAME`, a hub id `org/name[:config]`, a save_to_disk folder,
    a .parquet file, or a pandas DataFrame / datasets Dataset / DatasetDict. Columns are guessed where not given
    (GLUE's, else sentence1/sentence2, text, label, ...); the type is regression when a label is a non-integer
    number. Splits whose labels are all missing (GLUE's test) are left out."""
    from . import tables

    origin = source if isinstance(source, str) else type(source).__name__
    if isinstance(text_columns, str):
        text_columns = [c.strip() for c in text_columns.split(",") if c.strip()]
    key, default_name, splits = tables.open_source(source)
    glue = default_name if isinstance(source, str) and source.lower().startswith("glue/") else None
    first = next(iter(splits.values()))
    cols, label = tables.guess_columns(first, text_columns, label_column, origin, glue)
    kept = {s: t for s, t in splits.items() if tables.has_labels(t, label)}
    if not kept:
        raise DataError(f"{origin}: no split has labels in column '{label}'")
    ttype = task_type or ("regression" if glue == "stsb" else tables.infer_type(next(iter(kept.values())), label))
    test = "test" if "test" in kept else ("validation" if "validation" in kept else list(kept)[-1])
    try:
        return TaskSpec(name=name or default_name, type=ttype, pair=len(cols) == 2, test_split=test, base_dir=".",
                        splits={s: [FileSpec(path=key, format="table", split=s, text_columns=cols, label_column=label)]
                                for s in kept}, about=f"table task from {origin}")
    except ValidationError as e:
        raise ConfigError(f"{origin}: invalid task: {e.errors()[0]['msg']}") from None


def resolve_task(task: Any, text_columns: list[str] | str | None = None, label_column: str | None = None,
                 task_type: str | None = None) -> TaskSpec:
    """What `--task` (with --text-columns, --label-column, --task-type) names: a built-in, a spec file, a
    CSV/TSV/JSONL file described by the flags, or a table source (see `table_spec`)."""
    if isinstance(task, TaskSpec):
        return task
    if not isinstance(task, str):
        return table_spec(task, text_columns, label_column, task_type)
    from . import tables

    if Path(task).suffix.lower() in {".csv", ".tsv", ".jsonl"}:
        if not (text_columns and label_column and task_type):
            raise ConfigError(f"task: a data file ({task}) needs --text-columns, --label-column and --task-type", param="task")
        cols = text_columns if isinstance(text_columns, list) else [c.strip() for c in text_columns.split(",")]
        return user_task(name=Path(task).stem, type=task_type, files={"train": str(Path(task).resolve())},
                         text_columns=cols, label_column=label_column, origin=task)
    if (text_columns or label_column) and tables.is_table_source(task):
        return table_spec(task, text_columns, label_column, task_type)
    return get_spec(task)


def get_spec(task: str | TaskSpec) -> TaskSpec:
    """A built-in task by name, a user task from a .yaml/.yml/.json spec file, or a table source with its
    columns guessed (`glue/mrpc`, `org/name[:config]`, a .parquet file, a save_to_disk folder)."""
    from . import tables

    if isinstance(task, TaskSpec):
        return task
    key = task.lower().replace("-", "_")
    key = {"sts_b": "stsb", "sts_12": "sts12", "sst_2": "sst2", "amazon": "amazon_polarity"}.get(key, key)
    if key in BUILTIN:
        return BUILTIN[key]
    if Path(task).suffix in {".yaml", ".yml", ".json"}:
        return load_spec_file(task)
    if tables.is_table_source(task):
        return table_spec(task)
    raise ConfigError(f"unknown task '{task}': use one of {', '.join(BUILTIN)}, a task spec file (.yaml/.json), "
                      "a .parquet file, a datasets folder, glue/NAME or a hub dataset org/name[:config]", param="task")
