"""Task variants: the built-in tasks and same-input controls, as regression targets on fixed rows.

Every variant is trained with the squared loss on one scalar output (the theory's setting, and the readout whose
eNTK is computed): regression scores as they are, binary classes as -1/+1 (error = wrong sign). A control keeps
its parent's rows and texts (so its eNTK and beta) and changes only the targets."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..tasks import TaskData, get_spec, load_task
from .config import Control, EfficiencyConfig


@dataclass
class Variant:
    """One task variant: texts of the parent's train rows and test rows, and their targets."""

    name: str
    parent: str  # the task whose inputs (and kernel) it uses; itself for a built-in task
    family: str  # regression | classification (of the parent)
    control: Control | None
    pair: bool
    train_a: list[str]
    train_b: list[str] | None
    y_train: np.ndarray
    test_a: list[str]
    test_b: list[str] | None
    y_test: np.ndarray

    @property
    def classification(self) -> bool:
        """Scored by the sign (0-1 error) rather than the squared error."""
        return self.family == "classification"


def _targets(data: TaskData) -> np.ndarray:
    y = np.asarray(data.labels, dtype=np.float64)
    if data.task.type == "regression":
        return y
    if data.num_classes != 2:
        raise DataError(f"task '{data.task.name}': the efficiency experiment takes binary tasks ({data.num_classes} "
                        "classes); its one scalar output is the kernel's readout")
    return 2.0 * y - 1.0


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def _length(a: list[str], b: list[str] | None) -> np.ndarray:
    return np.array([len(x.split()) + (len(b[i].split()) if b is not None else 0) for i, x in enumerate(a)], float)


def relabel(c: Control, family: str, ya: np.ndarray, yb: np.ndarray, la: np.ndarray, lb: np.ndarray,
            ) -> tuple[np.ndarray, np.ndarray]:
    """The control's targets on the train (a) and test (b) rows; `la`/`lb` are the rows' word counts."""
    rng = np.random.default_rng(_seed(c.name))
    if c.kind == "permute":
        return rng.permutation(ya), rng.permutation(yb)
    if c.kind == "length":
        if family == "classification":
            med = float(np.median(la))
            return np.where(la > med, 1.0, -1.0), np.where(lb > med, 1.0, -1.0)
        mu, sd = float(la.mean()), float(la.std()) or 1.0
        return (la - mu) / sd, (lb - mu) / sd
    if c.kind == "flip":
        if family != "classification":
            raise DataError(f"controls: '{c.name}' flips labels of '{c.parent}', a regression task; use kind noise")
        return (np.where(rng.random(len(ya)) < c.amount, -ya, ya), np.where(rng.random(len(yb)) < c.amount, -yb, yb))
    if family != "regression":
        raise DataError(f"controls: '{c.name}' adds noise to '{c.parent}', a classification task; use kind flip")
    sd = float(ya.std()) or 1.0
    return ya + c.amount * sd * rng.standard_normal(len(ya)), yb + c.amount * sd * rng.standard_normal(len(yb))


def load_variants(cfg: EfficiencyConfig, data_dir: str | None) -> dict[str, Variant]:
    """Every variant of the config, in its order (tasks, then controls); the test rows are a seeded subsample."""
    out: dict[str, Variant] = {}
    for task in cfg.tasks:
        spec = get_spec(task)
        tr, te = load_task(spec, "train", data_dir), load_task(spec, spec.test_split, data_dir)
        if len(te) > cfg.n_test:
            te = te.take(np.sort(np.random.default_rng(0).permutation(len(te))[:cfg.n_test]))
        out[task] = Variant(task, task, spec.type, None, spec.pair, list(tr.text_a), tr.text_b, _targets(tr),
                            list(te.text_a), te.text_b, _targets(te))
    for c in cfg.controls:
        p = out[c.parent]
        ya, yb = relabel(c, p.family, p.y_train, p.y_test, _length(p.train_a, p.train_b), _length(p.test_a, p.test_b))
        out[c.name] = Variant(c.name, p.name, p.family, c, p.pair, p.train_a, p.train_b, ya, p.test_a, p.test_b, yb)
    return out


def pool_rows(n_train: int, pool: int) -> np.ndarray:
    """The kernel pool: `pool` train rows (seed 0), the same for a task and its controls."""
    if pool > n_train:
        raise DataError(f"pool: {pool} rows asked, the training split has {n_train}")
    return np.random.default_rng(0).permutation(n_train)[:pool]


def cell_rows(n_train: int, size: int, n_val: int, seed: int) -> np.ndarray:
    """Training + validation rows of a fine-tuning cell (seeded; the same for a task and its controls)."""
    if size + n_val > n_train:
        raise DataError(f"finetune: size {size} + {n_val} validation rows exceed the {n_train} training rows")
    return np.random.default_rng(1000 + seed).permutation(n_train)[:size + n_val]


def n_val_at(size: int, frac: float, minimum: int) -> int:
    """Validation rows at a training size: a fraction of it, at least `minimum` (issue 27: >= 32 at every size)."""
    return max(minimum, int(round(frac * size)))


def write_task(folder: Path, v: Variant, rows: np.ndarray) -> Path:
    """A task spec + JSONL files (rows `rows` of the train split, all test rows) for `ntkft`'s fine-tuning."""
    folder.mkdir(parents=True, exist_ok=True)

    def dump(path: Path, a: list[str], b: list[str] | None, y: np.ndarray, idx: np.ndarray) -> None:
        lines = [json.dumps({"a": a[i], **({"b": b[i]} if b is not None else {}), "y": float(y[i])}) for i in idx]
        path.write_text("\n".join(lines) + "\n")

    dump(folder / "train.jsonl", v.train_a, v.train_b, v.y_train, rows)
    dump(folder / "test.jsonl", v.test_a, v.test_b, v.y_test, np.arange(len(v.test_a)))
    spec = {"name": v.name, "type": "regression", "files": {"train": "train.jsonl", "test": "test.jsonl"},
            "text_columns": ["a", "b"] if v.pair else ["a"], "label_column": "y"}
    (folder / "task.json").write_text(json.dumps(spec))
    return folder / "task.json"
