"""Tasks from tables: Hugging Face datasets (`glue/NAME`, hub ids `org/name[:config]`, `save_to_disk` folders),
parquet files and in-memory pandas DataFrames / `datasets.Dataset` / `DatasetDict`.

A source becomes a dict {split: table} held for this process (a table is a DataFrame or a Dataset); the task
spec refers to it by a key, and the rows are read and validated like any file's (`tasks.data`). `datasets` and
`pandas` are optional (`pip install ntkft[hub]`): the error says so when one is missing. Nothing here reaches the
hub unless the user names a hub dataset."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError

# GLUE's text columns (nyu-mll/glue); the test splits have no labels (-1) and are dropped
GLUE: dict[str, tuple[str, ...]] = {
    "cola": ("sentence",), "sst2": ("sentence",), "mrpc": ("sentence1", "sentence2"), "qqp": ("question1", "question2"),
    "stsb": ("sentence1", "sentence2"), "mnli": ("premise", "hypothesis"), "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2"),
}
LABELS = ("label", "labels", "score", "y", "target")
PAIRS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "sentence"), ("question1", "question2"),
         ("text_a", "text_b"))
SINGLES = ("text", "sentence", "content", "review", "document")
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$")

_TABLES: dict[str, dict[str, Any]] = {}  # key -> {split: DataFrame | Dataset}


def is_table_source(task: str) -> bool:
    """A string that names a table source: glue/NAME, a .parquet file, a save_to_disk folder or a hub id."""
    p = Path(task)
    if task.lower().startswith("glue/") or p.suffix.lower() == ".parquet":
        return True
    if p.is_dir() and any((p / f).is_file() for f in ("dataset_dict.json", "state.json", "dataset_info.json")):
        return True
    return bool(HUB_ID.match(task)) and not p.exists()


def _datasets(what: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{what} needs the `datasets` package: pip install 'ntkft[hub]'") from None
    return datasets


def _splits_of(obj: Any, origin: str) -> dict[str, Any]:
    """{split: table} of a DataFrame, Dataset or DatasetDict (any mapping of split names to tables)."""
    if hasattr(obj, "column_names") and not isinstance(obj.column_names, dict):  # datasets.Dataset
        return {"train": obj}
    if hasattr(obj, "columns") and hasattr(obj, "iloc"):  # pandas.DataFrame
        return {"train": obj}
    if hasattr(obj, "keys") and hasattr(obj, "__getitem__"):
        out = {str(k): obj[k] for k in obj.keys()}
        if out and all(hasattr(t, "column_names") or hasattr(t, "iloc") for t in out.values()):
            return out
    raise ConfigError(f"{origin}: not a task source (a pandas DataFrame, datasets.Dataset or DatasetDict)")


def open_source(source: Any) -> tuple[str, str, dict[str, Any]]:
    """(key, name, {split: table}) of a source; strings are loaded once per process."""
    if not isinstance(source, str):
        key = f"object:{id(source)}"
        _TABLES[key] = _splits_of(source, type(source).__name__)
        return key, "table", _TABLES[key]
    if source in _TABLES:
        return source, _name(source), _TABLES[source]
    p = Path(source)
    if p.suffix.lower() == ".parquet":
        if not p.is_file():
            raise DataError(f"{p}: file not found")
        try:
            import pandas as pd

            tables = {"train": pd.read_parquet(p)}
        except ImportError:
            raise DataError(f"{p}: reading parquet needs pandas and pyarrow: pip install 'ntkft[hub]'") from None
        except Exception as e:  # pyarrow's errors for a damaged file
            raise DataError(f"{p}: not a readable parquet file ({str(e).splitlines()[0]})") from None
    elif p.is_dir():
        ds = _datasets(str(p))
        try:
            tables = _splits_of(ds.load_from_disk(str(p)), str(p))
        except (FileNotFoundError, ValueError, OSError) as e:
            raise DataError(f"{p}: not a datasets save_to_disk folder ({str(e).splitlines()[0]})") from None
    else:
        path, config = _hub_id(source)
        ds = _datasets(f"hub dataset {source}")
        try:
            tables = _splits_of(ds.load_dataset(path, config), source)
        except Exception as e:  # offline, unknown dataset or config: all one line
            raise DataError(f"hub dataset {source} could not be loaded (offline? unknown name or config?): "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    _TABLES[source] = tables
    return source, _name(source), tables


def _hub_id(source: str) -> tuple[str, str | None]:
    if source.lower().startswith("glue/"):
        return "nyu-mll/glue", source.split("/", 1)[1].lower()
    path, _, config = source.partition(":")
    return path, config or None


def _name(source: str) -> str:
    if source.lower().startswith("glue/"):
        return source.split("/", 1)[1].lower()
    p = Path(source)
    if p.suffix.lower() == ".parquet" or p.is_dir():
        return p.stem if p.suffix else p.name
    path, config = _hub_id(source)
    return path.split("/")[-1] + (f"-{config}" if config else "")


def columns(table: Any) -> list[str]:
    """Column names of a datasets.Dataset or a pandas DataFrame."""
    return list(table.column_names if hasattr(table, "column_names") else table.columns)


def column(table: Any, name: str) -> list[Any]:
    """One column of a datasets.Dataset or a pandas DataFrame as a list."""
    return list(table[name]) if hasattr(table, "column_names") else table[name].tolist()


def guess_columns(table: Any, text_columns: list[str] | None, label_column: str | None, origin: str,
                  glue: str | None = None) -> tuple[list[str], str]:
    """The text and label columns: as given, else GLUE's, else the common names; an error lists the columns."""
    cols = columns(table)
    if not text_columns:
        if glue in GLUE:
            text_columns = list(GLUE[glue])
        else:
            text_columns = next((list(p) for p in PAIRS if set(p) <= set(cols)), None) or next(
                ([c] for c in SINGLES if c in cols), None)
    label_column = label_column or next((c for c in LABELS if c in cols), None)
    if not text_columns or not label_column:
        raise ConfigError(f"{origin}: cannot tell the text and label columns; give --text-columns and --label-column "
                          f"(columns: {', '.join(cols)})")
    for c in [*text_columns, label_column]:
        if c not in cols:
            raise ConfigError(f"{origin}: no column '{c}' (columns: {', '.join(cols)})")
    return list(text_columns), label_column


def has_labels(table: Any, label_column: str) -> bool:
    """False for a split whose labels are all missing or -1 (GLUE's test splits)."""
    return any(v is not None and str(v) not in {"-1", "-1.0", "nan", ""} for v in column(table, label_column))


def infer_type(table: Any, label_column: str) -> str:
    """regression if any label is a non-integer number, else classification."""
    for v in column(table, label_column):
        if isinstance(v, float) and not float(v).is_integer():
            return "regression"
    return "classification"


def label_text(v: Any) -> str:
    """A label as text: integers stay integers even when pandas stored them as floats."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return "" if v is None else str(v)


def rows(key: str, split: str, text_columns: list[str], label_column: str) -> Iterator[tuple[str, str, str | None, str]]:
    """(origin, text_a, text_b, label) of one split of a registered source."""
    if key not in _TABLES:
        raise DataError(f"{key}: this table source is not loaded in this process (pass the object again)")
    table = _TABLES[key][split]
    a = column(table, text_columns[0])
    b = column(table, text_columns[1]) if len(text_columns) > 1 else None
    lab = column(table, label_column)
    name = key if not key.startswith("object:") else "table"
    for i in range(len(a)):
        yield f"{name}:{split}:{i}", "" if a[i] is None else str(a[i]), (None if b is None else str(b[i] or "")), \
            label_text(lab[i])
