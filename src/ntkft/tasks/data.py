"""Read and validate task files into `TaskData`; every problem names file, row and what is wrong."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from . import tables
from .spec import FileSpec, TaskSpec, get_spec, resolve_task

CR_SPLIT_SEED = 0
csv.field_size_limit(1 << 24)


@dataclass
class TaskData:
    """One split of a task: texts, labels (float scores or class indices) and provenance per row."""

    task: TaskSpec
    split: str
    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray
    origin: list[str]  # "file:line" of every row
    source: list[str] | None = None
    indices: np.ndarray = field(default=None)  # type: ignore[arg-type]  # row numbers within the split

    def __post_init__(self) -> None:
        if self.indices is None:
            self.indices = np.arange(len(self.text_a))

    def __len__(self) -> int:
        return len(self.text_a)

    @property
    def num_classes(self) -> int:
        return len(self.task.labels or []) if self.task.type == "classification" else 0

    def fingerprint(self) -> str:
        """sha256 of the rows' contents (texts, labels, split indices): the data part of a resume key."""
        import hashlib

        h = hashlib.sha256(f"{self.task.name}|{self.task.type}|{self.split}|{len(self)}".encode())
        for i, a in enumerate(self.text_a):
            h.update(a.encode() + b"\x00" + (self.text_b[i].encode() if self.text_b is not None else b"") + b"\x01")
        h.update(np.ascontiguousarray(self.labels).tobytes())
        h.update(np.ascontiguousarray(self.indices, dtype=np.int64).tobytes())
        h.update(",".join(map(str, self.task.labels or [])).encode())
        return h.hexdigest()

    def take(self, idx: Any) -> TaskData:
        """The rows at positions `idx` (keeps their original split indices)."""
        idx = np.asarray(idx, dtype=np.int64)
        pick: Any = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return replace(self, text_a=pick(self.text_a), text_b=pick(self.text_b), labels=self.labels[idx],
                       origin=pick(self.origin), source=pick(self.source), indices=self.indices[idx])


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The data directory: the argument, else $NTKFT_DATA_DIR, else ./data if present."""
    if explicit:
        p = Path(explicit)
        if not p.is_dir():
            raise DataError(f"{p}: data directory not found")
        return p
    env = os.environ.get("NTKFT_DATA_DIR")
    if env:
        if not Path(env).is_dir():
            raise DataError(f"{env}: NTKFT_DATA_DIR is not a directory")
        return Path(env)
    return Path("data") if Path("data").is_dir() else None


# ---------------------------------------------------------------- raw readers: yield (line, fields dict)


def _open_text(path: Path) -> str:
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a data file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None


def _delimited(path: Path, fs: FileSpec, delimiter: str) -> Iterator[tuple[int, dict[Any, str]]]:
    text = _open_text(path)
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    quoting: Any = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(text.splitlines(keepends=True) if delimiter == "\t" else _csv_lines(text),
                        delimiter=delimiter, quoting=quoting, strict=True)
    try:
        header: list[str] = (fs.columns or []) if not fs.header else [h.strip() for h in next(reader)]
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise DataError(f"{path}:1: duplicate column name '{dup[0][:40]}'")
        for col in fs.text_columns + [fs.label_column]:
            if col not in header:
                raise DataError(f"{path}: missing column '{col}' ({_describe_header(header)})")
        for row in reader:
            line = reader.line_num
            if not row:  # a blank line holds no row; anything else must have every field
                continue
            if len(row) != len(header) and not (fs.min_fields and len(row) >= len(header)):
                raise DataError(f"{path}:{line}: expected {len(header)} fields, found {len(row)}")
            yield line, dict(zip(header, row))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} ({e})") from None


def _describe_header(header: list[str]) -> str:
    """The columns found, named only when they look like column names (never echo a foreign file's line)."""
    plausible = len(header) >= 2 and all(0 < len(h) <= 40 and h.replace("_", "").replace("-", "").replace(" ", "").isalnum()
                                         for h in header)
    return f"columns: {', '.join(header[:20])}" if plausible else f"found {len(header)} unnamed or unusual column(s)"


def _csv_lines(text: str) -> Any:
    import io

    return io.StringIO(text, newline="")


def _jsonl(path: Path, fs: FileSpec) -> Iterator[tuple[int, dict[Any, Any]]]:
    text = _open_text(path)
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{i}: expected a JSON object per line")
        for col in fs.text_columns + [fs.label_column]:
            if col not in obj:
                raise DataError(f"{path}:{i}: missing field '{col}'")
            if isinstance(obj[col], (list, dict)):
                raise DataError(f"{path}:{i}: field '{col}' is a JSON {type(obj[col]).__name__}, expected a string or number")
        yield i, {k: ("" if v is None else str(v)) for k, v in obj.items()}


def _rows(base: Path, fs: FileSpec) -> Iterator[tuple[str, str, str | None, Any, Any]]:
    """Yield (origin, text_a, text_b, raw_label, source) for one file."""
    path = base / fs.path
    if fs.format in {"table", "parquet"}:  # tasks.tables: datasets, DataFrames, parquet files
        key = fs.path if fs.format == "table" else tables.open_source(str(path))[0]
        for origin, a, b, lab in tables.rows(key, fs.split or "train", fs.text_columns, fs.label_column or ""):
            yield origin, a, b, lab, fs.source
        return
    if fs.format in {"tsv", "csv", "jsonl"}:
        it = _jsonl(path, fs) if fs.format == "jsonl" else _delimited(path, fs, "\t" if fs.format == "tsv" else ",")
        a, b = fs.text_columns[0], (fs.text_columns[1] if len(fs.text_columns) > 1 else None)
        for ln, r in it:
            yield f"{path}:{ln}", r[a], (r[b] if b else None), r[fs.label_column], fs.source
    elif fs.format == "semrel":
        for ln, r in _delimited(path, fs, ","):
            parts = r["Text"].split("\n")
            if len(parts) != 2:
                raise DataError(f"{path}:{ln}: Text must hold two sentences separated by a newline, found {len(parts)}")
            yield f"{path}:{ln}", parts[0], parts[1], r["Score"], None
    elif fs.format == "sts12":
        inputs = _open_text(path).splitlines()
        gold_path = base / (fs.gold or "")
        golds = _open_text(gold_path).splitlines()
        if len(inputs) != len(golds):
            raise DataError(f"{path}: {len(inputs)} sentence pairs but {gold_path.name} has {len(golds)} scores")
        for i, (line, g) in enumerate(zip(inputs, golds), 1):
            parts = line.split("\t")
            if len(parts) != 2:
                raise DataError(f"{path}:{i}: expected 2 tab-separated sentences, found {len(parts)} fields")
            yield f"{path}:{i}", parts[0], parts[1], g, fs.source
    elif fs.format == "lines":
        lines = _open_text(path).splitlines()
        if not any(line.strip() for line in lines):
            raise DataError(f"{path}: file holds no sentences (every line of class '{fs.label}' is missing)")
        for i, line in enumerate(lines, 1):
            if line.strip():  # blank lines separate nothing and hold no sentence
                yield f"{path}:{i}", line.strip(), None, fs.label, None
    elif fs.format == "fasttext":
        for i, line in enumerate(_open_text(path).splitlines(), 1):
            line = line.rstrip("\r")
            if not line.strip():
                continue
            lab, _, text = line.partition(" ")
            if not lab.startswith("__label__") or not text.strip():
                raise DataError(f"{path}:{i}: expected '__label__N text'")
            yield f"{path}:{i}", text, None, lab[len("__label__"):], None


def _finish(spec: TaskSpec, split: str, rows: list) -> TaskData:
    if not rows:
        raise DataError(f"task '{spec.name}' split '{split}' has no rows")
    labels = []
    label_index = {lab: i for i, lab in enumerate(spec.labels or [])}
    known = ", ".join(spec.labels or [])
    for origin, a, b, raw, _ in rows:
        raw = raw.strip()
        if not a.strip() or (spec.pair and (b is None or not b.strip())):
            raise DataError(f"{origin}: empty text")
        if spec.type == "regression":
            try:
                v = float(raw)
            except ValueError:
                raise DataError(f"{origin}: score '{raw}' is not a number") from None
            if not math.isfinite(v):
                raise DataError(f"{origin}: score is {raw} (not finite)")
            labels.append(v)
        else:
            if raw not in label_index:
                raise DataError(f"{origin}: unknown label '{raw}' (expected one of {known})")
            labels.append(label_index[raw])
    arr = np.asarray(labels, dtype=np.float64 if spec.type == "regression" else np.int64)
    if spec.type == "classification" and split in ("train", "all"):
        empty = [lab for i, lab in enumerate(spec.labels or []) if not (arr == i).any()]
        if empty and len(empty) <= len(spec.labels or []) - 2:  # (one class left: said later, as "only one class")
            files = ", ".join(sorted({o.rsplit(":", 1)[0] for o in [r[0] for r in rows]}))
            raise DataError(f"{files}: declared class(es) {', '.join(map(repr, empty))} of task '{spec.name}' have no "
                            f"rows in split '{split}'; add rows or drop the class from labels")
    sources = [r[4] for r in rows]
    return TaskData(spec, split, [r[1] for r in rows], [r[2] for r in rows] if spec.pair else None, arr,
                    [r[0] for r in rows], sources if any(s is not None for s in sources) else None)


def _infer_labels(spec: TaskSpec, base: Path) -> TaskSpec:
    """User classification tasks without a label list: the sorted labels seen in the first split."""
    if spec.type != "classification" or spec.labels:
        return spec
    first = next(iter(spec.splits))
    where: dict[str, str] = {}
    for fs in spec.splits[first]:
        for r in _rows(base, fs):
            where.setdefault(r[3].strip(), r[0])
    seen = sorted(where)
    as_num: dict[float, str] = {}
    for lab in seen:
        try:
            v = float(lab)
        except ValueError:
            continue
        if v in as_num:
            raise DataError(f"{where[lab]}: label '{lab}' and label '{as_num[v]}' ({where[as_num[v]]}) are the same "
                            "number written two ways; write each class one way")
        as_num[v] = lab
    if len(seen) < 2:
        raise DataError(f"task '{spec.name}': split '{first}' has only the label(s) {seen}; need at least 2 classes")
    return spec.model_copy(update={"labels": seen})


def load_task(task: Any, split: str | None = None, data_dir_: str | os.PathLike | None = None, *,
              text_columns: list[str] | str | None = None, label_column: str | None = None,
              task_type: str | None = None) -> TaskData:
    """Load one split (default: the task's test split) from the data directory, else from the hub.

    `task` is a built-in name, a spec file, a TaskSpec, or a table: a pandas DataFrame, a datasets Dataset /
    DatasetDict, a .parquet file, a save_to_disk folder, `glue/NAME` or a hub id `org/name[:config]` (columns
    guessed unless given; see `tasks.table_spec`)."""
    spec = resolve_task(task, text_columns, label_column, task_type) if not isinstance(task, str) or text_columns \
        or label_column else get_spec(task)
    split = split or spec.test_split
    if split not in spec.split_names():
        raise DataError(f"task '{spec.name}' has no split '{split}' (splits: {', '.join(spec.split_names())})")
    if spec.base_dir is not None:
        base = Path(spec.base_dir)
    else:
        found = data_dir(data_dir_)
        if found is None or not (found / spec.splits[next(iter(spec.splits))][0].path).exists():
            return _from_hub(spec, split, found)
        base = found
    spec = _infer_labels(spec, base)
    if spec.seeded_split:
        full = _finish(spec, "all", [r for fs in spec.splits["all"] for r in _rows(base, fs)])
        return _seeded(full, split)
    return _finish(spec, split, [r for fs in spec.splits[split] for r in _rows(base, fs)])


def _seeded(full: TaskData, split: str) -> TaskData:
    """CR-style fixed split: stratified, seed CR_SPLIT_SEED, fractions from the spec."""
    from sklearn.model_selection import train_test_split

    fracs = full.task.seeded_split or {}
    names = list(fracs)
    idx = np.arange(len(full))
    tr, te = train_test_split(idx, test_size=fracs[names[1]], random_state=CR_SPLIT_SEED, stratify=full.labels)
    out = full.take(np.sort(tr if split == names[0] else te))
    out.split = split
    out.indices = np.arange(len(out))
    return out


def _from_hub(spec: TaskSpec, split: str, base: Path | None) -> TaskData:
    where = f"no local files for '{spec.name}' under {base}" if base else "no data directory (--data-dir / NTKFT_DATA_DIR)"
    if not spec.hub:
        raise DataError(f"{where}, and task '{spec.name}' has no hub fallback")
    try:
        import datasets
    except ImportError:
        raise DataError(f"{where}; the hub fallback needs `pip install datasets`") from None
    hub_split = {"validation": "validation", "test": "test", "train": "train"}.get(split, split)
    try:
        ds = datasets.load_dataset(spec.hub["path"], spec.hub.get("name"), split=hub_split)
    except Exception as e:  # offline, unknown dataset, ...: all reported the same way
        raise DataError(f"{where}, and the hub dataset {spec.hub['path']} could not be loaded "
                        f"(offline?): {str(e).splitlines()[0]}") from None
    a, b, lab = spec.hub["a"], spec.hub.get("b"), spec.hub["label"]
    mapping = spec.hub.get("map")
    rows = []
    for i, r in enumerate(ds):
        raw = r[lab]
        if spec.type == "classification":  # hub labels are class ints; `map` reorders them to ours
            k = int(raw)
            raw = (spec.labels or [])[int(mapping.split(",")[k]) if mapping else k]
        rows.append((f"hub:{spec.hub['path']}:{split}:{i}", str(r[a]), str(r[b]) if b else None, str(raw), None))
    return _finish(spec, split, rows)
