"""The shape of a kernel computation: options, inputs, and a plan of work units.

A plan is a list of passes; each pass first *produces* artifacts (e.g. the layer factors of a batch of
samples) and then runs *contribution* units that each add one block into K. Units within a stage are
independent, so an executor may run them in any order or on other ranks; K's rows and columns are in
the plan's sorted sample order (samples sorted by length), which `assemble` undoes."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..errors import ConfigError, KernelError

GiB = 2**30


@dataclass(frozen=True)
class Inputs:
    """Token ids and attention mask of N samples, (N, T) each, validated."""

    ids: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def of(cls, x: Any, name: str) -> Inputs:
        """Validate an `encode(...)` dict."""
        if not isinstance(x, dict) or "input_ids" not in x or "attention_mask" not in x:
            raise ConfigError(f"{name}: must be a dict with 'input_ids' and 'attention_mask' (as returned by encode)", param=name)
        ids, mask = x["input_ids"], x["attention_mask"]
        if not isinstance(ids, torch.Tensor) or not isinstance(mask, torch.Tensor):
            raise ConfigError(f"{name}: input_ids and attention_mask must be tensors")
        if ids.dim() != 2 or ids.shape != mask.shape:
            raise ConfigError(f"{name}: input_ids {tuple(ids.shape)} and attention_mask {tuple(mask.shape)} "
                              "must be equal (N, T)")
        if ids.shape[0] == 0:
            raise KernelError(f"{name}: empty sample set (N = 0)")
        if (mask.sum(1) == 0).any():
            raise KernelError(f"{name}: row {int((mask.sum(1) == 0).nonzero()[0])} has no tokens")
        return cls(ids.cpu(), mask.cpu())

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1)

    def take(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows' ids and mask, with columns that are padding in every row dropped (exact: positions come
        from the mask)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        ids, mask = self.ids[idx], self.mask[idx]
        keep = mask.bool().any(0)
        return (ids, mask) if keep.all() else (ids[:, keep], mask[:, keep])

    def digest(self) -> str:
        h = hashlib.sha256(str(tuple(self.ids.shape)).encode())
        h.update(self.ids.contiguous().numpy().tobytes())
        h.update(self.mask.contiguous().numpy().tobytes())
        return h.hexdigest()


@dataclass
class Options:
    """Everything besides model, inputs and parameters that shapes the computation."""

    max_memory: int  # bytes for features, scratch and K (the model itself not counted)
    max_disk: int | None = None  # bytes of scratch files; None = no limit
    batch_size: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    accumulate: str = "host"  # where float64 K is accumulated: "host" or "device"
    sketch_dim: int | None = None
    seed: int = 0
    progress: bool = True

    def to_key(self) -> dict[str, Any]:
        """The options that change the result beyond the plan (budgets and batch size act through the plan)."""
        return {"sketch_dim": self.sketch_dim, "seed": self.seed, "accumulate": self.accumulate}


@dataclass(frozen=True)
class Unit:
    """One piece of work. `id` names its result in a store; `data` is JSON-able (sample rows, entries...)."""

    id: str
    kind: str
    cost: float = 1.0
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Pass:
    """Artifacts to produce, then the units that add their blocks into K; the artifacts are dropped after."""

    produce: list[Unit] = field(default_factory=list)
    contribute: list[Unit] = field(default_factory=list)


@dataclass
class Plan:
    """All work units of one kernel, in passes; rows/cols of K in sorted sample order `order1`/`order2`."""

    method: str
    n1: int
    n2: int
    out_dim: int
    sym: bool
    order1: list[int]
    order2: list[int]
    passes: list[Pass]
    spill: bool = False  # produced artifacts go to disk (a checkpoint or a temporary folder)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.n1 * self.out_dim

    @property
    def cols(self) -> int:
        return self.n2 * self.out_dim

    def units(self) -> list[Unit]:
        return [u for p in self.passes for u in p.produce + p.contribute]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        """sha256 of the work itself (units, passes, order, spill), not of the diagnostics in `info`: a rerun
        under another budget that plans the same units resumes."""
        d = self.to_dict()
        d.pop("info", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Block:
    """A contribution: K[row0:row0+r, col0:col0+c] += values (float64)."""

    row0: int
    col0: int
    values: torch.Tensor


@dataclass
class Artifact:
    """A produced result: tensors plus JSON-able metadata, kept in a store until its pass is done."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


# ------------------------------------------------------------------ batching


def sort_by_length(inputs: Inputs) -> list[int]:
    """Sample rows sorted by length (stable), so batches of neighbours carry little padding."""
    return torch.argsort(inputs.lengths, stable=True).tolist()


def bucket(lengths: list[int], max_batch: int, overhead_rows: float = 8.0) -> list[tuple[int, int]]:
    """Cut rows sorted by length into contiguous batches of at most `max_batch` rows, minimising the padded work
    sum over batches of (rows + overhead_rows) * longest (dynamic programming; the overhead stands for the
    per-batch cost, in rows). Returns (start, stop) ranges: padding costs real flops, so short rows stay together."""
    n = len(lengths)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for stop in range(1, n + 1):
        for start in range(max(0, stop - max_batch), stop):
            cost = best[start] + (stop - start + overhead_rows) * lengths[stop - 1]
            if cost < best[stop]:
                best[stop], cut[stop] = cost, start
    out, stop = [], n
    while stop > 0:
        out.append((cut[stop], stop))
        stop = cut[stop]
    return out[::-1]


def batches(inputs: Inputs, order: list[int], max_batch: int, overhead_rows: float = 8.0) -> list[list[int]]:
    """Length-bucketed batches of sample rows (in `order`, which is sorted by length)."""
    lens = inputs.lengths[torch.as_tensor(order, dtype=torch.long)].tolist()
    return [order[a:b] for a, b in bucket(lens, max_batch, overhead_rows)]


def available_memory() -> int:
    """Bytes of memory the OS can give this process now (MemAvailable), or 8 GiB when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - any failure means "unknown"
        return 8 * GiB


def default_max_memory(device: torch.device | str | None = None) -> int:
    """The default budget: on CUDA, 80% of the device memory free now; on the host, a quarter of the memory
    available now (whole GiB, at least 1 GiB), so that factors that do not fit go to disk early (read back from
    the page cache) and the process stays small."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return max(GiB // 4, int(0.8 * free))
    return max(1, int(0.25 * available_memory() // GiB)) * GiB
