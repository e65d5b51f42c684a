"""Task vectors tau = theta_FT - theta_PT (eq 22) as lazy linear combinations of checkpoints on disk.

A `TaskVector` is sum_k c_k (theta_k - theta_PT) over fine-tuned checkpoints k; arithmetic only changes the
coefficients, and every tensor is computed when asked for, one name at a time, from the safetensors files. So
tau1 + tau2 - tau2 is tau1 exactly, and a model larger than RAM never has to be loaded. Task heads are not part
of the backbone: each checkpoint's head stays with its task (`heads`), never merged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, ModelError
from .sources import Checkpoint, Head, Pretrained, open_checkpoint


class _Reader:
    """Tensors of the current name, each file read once however many vectors use it."""

    def __init__(self, base: Pretrained) -> None:
        self.base = base
        self.name: str | None = None
        self.cache: dict[str, torch.Tensor] = {}

    def at(self, name: str) -> None:
        if name != self.name:
            self.name, self.cache = name, {}

    def pt(self) -> torch.Tensor:
        if "" not in self.cache:
            self.cache[""] = self.base.files.get(self.name)  # type: ignore[arg-type]
        return self.cache[""]

    def delta(self, ck: Checkpoint) -> torch.Tensor:
        """theta_k - theta_PT at the current name (computed in the tensors' own dtype, as mergekit does)."""
        key = ck.key
        if key not in self.cache:
            self.cache[key] = ck.get(self.name).sub_(self.pt())  # type: ignore[arg-type]  # a fresh tensor
        return self.cache[key]


@dataclass(frozen=True)
class TaskVector:
    """sum_k c_k (theta_k - theta_PT): `terms` are (coefficient, checkpoint) pairs over one pretrained model."""

    base: Pretrained
    terms: tuple[tuple[float, Checkpoint], ...]

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_checkpoint(cls, pretrained: str | Pretrained, finetuned: str | Path | Checkpoint,
                        name: str | None = None) -> TaskVector:
        """tau = theta_FT - theta_PT for one fine-tuned checkpoint (run folder, OUT/model or HF directory)."""
        base = pretrained if isinstance(pretrained, Pretrained) else Pretrained.open(pretrained)
        ck = finetuned if isinstance(finetuned, Checkpoint) else open_checkpoint(finetuned, base, name)
        return cls(base, ((1.0, ck),))

    @property
    def name(self) -> str:
        """A readable label: the task name for a single vector, else the combination."""
        parts = []
        for c, ck in self.terms:
            if c == 1.0:
                parts.append(f"+{ck.name}")
            elif c == -1.0:
                parts.append(f"-{ck.name}")
            else:
                parts.append(f"{c:+g}*{ck.name}")
        s = "".join(parts)
        return (s[1:] if s.startswith("+") else s) or "0"

    @property
    def checkpoints(self) -> list[Checkpoint]:
        return [ck for _, ck in self.terms]

    @property
    def heads(self) -> dict[str, Head]:
        """Each task's own head (tasks without a saved head are absent; see `report()`)."""
        return {ck.name: ck.head for ck in self.checkpoints if ck.head is not None}

    # ------------------------------------------------------------------ arithmetic

    @staticmethod
    def _scalar(x: Any) -> float:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise ConfigError(f"task vectors scale by finite numbers, got {x!r}")
        return float(x)

    def _check_base(self, other: TaskVector) -> None:
        if not isinstance(other, TaskVector):
            raise ConfigError(f"cannot combine a task vector with {type(other).__name__}")
        if other.base.key != self.base.key:
            raise ModelError(f"task vectors of different pretrained models ({self.base.spec} vs {other.base.spec}) "
                             "cannot be combined")

    def _combine(self, other: TaskVector, sign: float) -> TaskVector:
        self._check_base(other)
        coef: dict[str, float] = {}
        cks: dict[str, Checkpoint] = {}
        for c, ck in self.terms:
            coef[ck.key] = coef.get(ck.key, 0.0) + c
            cks[ck.key] = ck
        for c, ck in other.terms:
            coef[ck.key] = coef.get(ck.key, 0.0) + sign * c
            cks.setdefault(ck.key, ck)
        return TaskVector(self.base, tuple((c, cks[k]) for k, c in coef.items() if c != 0.0))

    def __add__(self, other: TaskVector) -> TaskVector:
        return self._combine(other, 1.0)

    def __radd__(self, other: Any) -> TaskVector:
        if isinstance(other, (int, float)) and other == 0:  # sum([...]) starts from 0
            return self
        return self._combine(other, 1.0)

    def __sub__(self, other: TaskVector) -> TaskVector:
        return self._combine(other, -1.0)

    def __neg__(self) -> TaskVector:
        return TaskVector(self.base, tuple((-c, ck) for c, ck in self.terms))

    def __mul__(self, s: float) -> TaskVector:
        s = self._scalar(s)
        if s == 0.0:
            return TaskVector(self.base, ())
        return TaskVector(self.base, tuple((s * c, ck) for c, ck in self.terms))

    __rmul__ = __mul__

    def __truediv__(self, s: float) -> TaskVector:
        s = self._scalar(s)
        if s == 0.0:
            raise ConfigError("cannot divide a task vector by 0")
        return self * (1.0 / s)

    # ------------------------------------------------------------------ tensors

    def names(self) -> list[str]:
        """Pretrained tensor names the vector is non-zero on (float tensors shared with some checkpoint)."""
        used: set[str] = set()
        for _, ck in self.terms:
            used.update(ck.from_base)
        return [n for n in self.base.float_names() if n in used]

    def _tensor(self, name: str, rd: _Reader) -> torch.Tensor:
        rd.at(name)
        acc: torch.Tensor | None = None
        for c, ck in self.terms:
            if name not in ck.from_base:
                continue
            d = rd.delta(ck)
            d = d if c == 1.0 else d * c
            acc = d if acc is None else acc + d
        if acc is None:
            m = self.base.files.meta[name]
            return torch.zeros(m.shape, dtype=m.dtype)
        return acc

    def tensor(self, name: str) -> torch.Tensor:
        """tau at one pretrained tensor name (zeros where no checkpoint differs)."""
        if name not in self.base.files.meta:
            raise ModelError(f"the pretrained model {self.base.spec} has no tensor '{name}'")
        return self._tensor(name, _Reader(self.base))

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tau tensor) one at a time."""
        rd = _Reader(self.base)
        for n in self.names():
            yield n, self._tensor(n, rd)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All of tau in memory (small models and tests only)."""
        return dict(self.items())

    @property
    def numel(self) -> int:
        return sum(self.base.files.meta[n].numel for n in self.names())

    # ------------------------------------------------------------------ geometry

    def dot(self, other: TaskVector) -> float:
        return float(gram([self, other], progress=False)[0, 1])

    def norm(self) -> float:
        return math.sqrt(max(float(gram([self], progress=False)[0, 0]), 0.0))

    def cosine(self, other: TaskVector) -> float:
        g = gram([self, other], progress=False)
        return float(g[0, 1] / math.sqrt(float(g[0, 0] * g[1, 1]))) if g[0, 0] > 0 and g[1, 1] > 0 else float("nan")

    def report(self) -> dict[str, Any]:
        """Terms, heads kept per task, and tensors outside the shared backbone (never merged silently)."""
        return {"name": self.name, "pretrained": self.base.spec, "pretrained_dir": str(self.base.dir),
                "numel": self.numel, "terms": [{"coefficient": c, **ck.report()} for c, ck in self.terms],
                "heads": {t: {"file": str(h.file), "shape": list(h.weight.shape)} for t, h in self.heads.items()}}


def gram(vectors: Sequence[TaskVector], progress: bool = True) -> torch.Tensor:
    """G_ij = <tau_i, tau_j> in float64, streaming: each file is read once per tensor name for all vectors."""
    if not vectors:
        raise ConfigError("gram: needs at least one task vector")
    for v in vectors[1:]:
        vectors[0]._check_base(v)
    base = vectors[0].base
    names = [n for n in base.float_names() if any(n in ck.from_base for v in vectors for _, ck in v.terms)]
    g = torch.zeros(len(vectors), len(vectors), dtype=torch.float64)
    rd = _Reader(base)
    for n in tqdm(names, desc="task-vector inner products", disable=not progress, unit="tensor"):
        flat = [v._tensor(n, rd).reshape(-1).double() for v in vectors]
        for i in range(len(flat)):
            for j in range(i, len(flat)):
                g[i, j] += torch.dot(flat[i], flat[j])
    return torch.triu(g) + torch.triu(g, 1).T


def total(vectors: Sequence[TaskVector]) -> TaskVector:
    """sum_i tau_i of one or more task vectors."""
    if not vectors:
        raise ConfigError("finetuned: needs at least one task vector")
    out = vectors[0]
    for v in vectors[1:]:
        out = out + v
    return out


def cosine_matrix(vectors: Sequence[TaskVector], progress: bool = True) -> torch.Tensor:
    """cos(tau_i, tau_j) (Figure 3 left); NaN where a vector is zero."""
    return cosine_from_gram(gram(vectors, progress))


def cosine_from_gram(g: torch.Tensor) -> torch.Tensor:
    """Cosines from inner products G_ij; NaN where a vector is zero."""
    d = g.diagonal().clamp(min=0).sqrt()
    with torch.no_grad():
        c = g / (d[:, None] * d[None, :])
    c[(d[:, None] == 0) | (d[None, :] == 0)] = float("nan")
    return c


def task_vectors(pretrained: str | Pretrained, finetuned: Iterable[str | Path]) -> list[TaskVector]:
    """One task vector per fine-tuned checkpoint ('path' or 'task=path'), sharing one pretrained model."""
    base = pretrained if isinstance(pretrained, Pretrained) else Pretrained.open(pretrained)
    out = [TaskVector.from_checkpoint(base, f) for f in finetuned]
    seen: dict[str, str] = {}
    for v in out:
        ck = v.checkpoints[0]
        if ck.key in seen:
            raise ConfigError(f"finetuned: checkpoint {ck.source} is given twice (also as {seen[ck.key]})")
        seen[ck.key] = ck.source
    names = [v.name for v in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"finetuned: two checkpoints are both called '{sorted(dup)[0]}'; label them as task=path")
    return out
