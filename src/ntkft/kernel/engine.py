"""Plan, execute, assemble: the three steps every kernel method goes through.

`plan_units` builds the method's deterministic plan; `execute` runs its units in one process (skipping
units a checkpoint already holds) and returns K in the plan's sorted order; `assemble` mirrors the
upper triangle of a symmetric K and restores the caller's sample order. A distributed executor can
reuse `plan_units`, `Checkpoint`, `Accumulator` and `assemble` unchanged and only share out the units."""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import Accumulator, Checkpoint, MemoryStore, Store
from .contract import KernelModel, as_kernel_model
from .plan import Artifact, Block, Inputs, Options, Plan
from .registry import KernelMethod, Method, implementation

log = logging.getLogger(__name__)


_frozen = 0  # nesting depth of frozen_gc


@contextmanager
def frozen_gc() -> Iterator[None]:
    """The objects alive when a kernel run starts (the model; torch's and transformers' modules: ~450,000) sit in the
    garbage collector's permanent generation until it ends, so the full collections the run's own allocations
    trigger do not walk them: one took 0.22 s inside a 0.5 s MiniLM kernel (N = 16). What the run creates is
    collected as usual; the frozen objects return to the collector afterwards (gc.freeze / gc.unfreeze)."""
    global _frozen
    if _frozen == 0:
        gc.freeze()
    _frozen += 1
    try:
        yield
    finally:
        _frozen -= 1
        if _frozen == 0:
            gc.unfreeze()


def plan_units(model: KernelModel | nn.Module, x1: Inputs, x2: Inputs | None, params: dict[str, nn.Parameter], method: Method,
               options: Options) -> tuple[KernelMethod, Plan]:
    """The method's implementation for these inputs and its plan (call inside `differentiating(...)`)."""
    impl = implementation(method)(as_kernel_model(model), params, options)
    return impl, impl.plan(x1, x2)


def weights_digest(model: nn.Module, sample: int = 1 << 12) -> str:
    """A fingerprint of every weight and buffer: names, shapes, dtypes, float64 sums and the first/last values.
    Another checkpoint or any training changes it (part of a checkpoint's key)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            flat = t.detach().reshape(-1)
            if flat.numel() == 0:
                continue
            if flat.is_floating_point():
                h.update(repr(float(flat.sum(dtype=torch.float64))).encode())
            ends = flat if flat.numel() <= 2 * sample else torch.cat([flat[:sample], flat[-sample:]])
            h.update(ends.cpu().double().numpy().tobytes() if ends.is_floating_point() else ends.cpu().numpy().tobytes())
    return h.hexdigest()


@dataclass
class Stores:
    """Where artifacts and the accumulator live for one run, and what to clean up after it."""

    artifacts: Store
    accumulator: Store
    checkpoint: Checkpoint | None
    scratch: tempfile.TemporaryDirectory[str] | None = None

    def finish(self) -> None:
        """After success: drop every file this run wrote (the caller's other files are never touched)."""
        if self.checkpoint is not None:
            self.checkpoint.clear()
        self.close()

    def close(self) -> None:
        if self.scratch is not None:
            self.scratch.cleanup()
            self.scratch = None


def open_stores(plan: Plan, checkpoint_dir: str | Path | None, key: dict[str, Any] | None) -> Stores:
    """A checkpoint folder holds finished units and the accumulator; artifacts stay in memory unless the plan
    spills them (then to the checkpoint, or to a temporary folder removed at the end)."""
    ckpt = Checkpoint(checkpoint_dir, key or {}) if checkpoint_dir is not None else None
    scratch = None
    if plan.spill and ckpt is not None:
        artifacts: Store = ckpt
    elif plan.spill:
        scratch = tempfile.TemporaryDirectory(prefix="ntkft-kernel-")
        artifacts = Checkpoint(scratch.name, key or {})
    else:
        artifacts = MemoryStore()
    return Stores(artifacts, ckpt if ckpt is not None else MemoryStore(), ckpt, scratch)


def execute(impl: KernelMethod, plan: Plan, stores: Stores, progress: bool = True,
            accumulate_on: torch.device | str = "cpu", compute_on: torch.device | str = "cpu") -> torch.Tensor:
    """Run every unit not yet done, pass by pass; returns K (float64) in the plan's sorted order."""
    big = plan.rows * plan.cols * 8 > 64 * 2**20
    acc = Accumulator(plan.rows, plan.cols, stores.accumulator, accumulate_on, every=30.0 if big else 0.0)
    bar = tqdm(total=len(plan.units()), desc=f"eNTK ({plan.method})", disable=not progress, unit="unit")
    writer = ThreadPoolExecutor(1, thread_name_prefix="ntkft-spill") \
        if isinstance(stores.artifacts, Checkpoint) and overlap_writes(compute_on) else None
    try:
        _run(impl, plan, stores, acc, bar, writer)
    finally:
        if writer is not None:
            writer.shutdown(wait=True)
        bar.close()
    return acc.k


def overlap_writes(device: torch.device | str) -> bool:
    """Spilled factors are written while the next batch computes only when that leaves the compute alone: on a
    GPU, or with a core torch's threads do not use. Otherwise the writer takes a core from the GEMMs and every
    parallel operator waits for the slowed thread (2 cores, SmolLM2 N = 100: features 19.2 s with the writer
    beside them, 14.0 s + 6.9 s of writing one after the other, 41.9-43.3 s in all against 44-45 s)."""
    if torch.device(device).type != "cpu":
        return True
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return torch.get_num_threads() < usable  # the cores this process may run on, not the machine's


def _run(impl: KernelMethod, plan: Plan, stores: Stores, acc: Accumulator, bar: Any, writer: Any) -> None:
    for p in plan.passes:
        if all(acc.has(u.id) for u in p.contribute):
            bar.update(len(p.produce) + len(p.contribute))
            continue
        pending: Future[None] | None = None  # with a writer, spilled artifacts are written while the next unit computes
        for u in p.produce:
            if not stores.artifacts.has(u.id):
                art = impl.compute_unit(u, stores.artifacts)
                assert isinstance(art, Artifact)
                if pending is not None:
                    pending.result()
                if writer is not None:
                    pending = writer.submit(stores.artifacts.put, u.id, art.tensors, art.meta, False)
                else:
                    stores.artifacts.put(u.id, art.tensors, art.meta, durable=False)
                del art
            bar.update(1)
        if pending is not None:
            pending.result()
        for u in p.contribute:
            if not acc.has(u.id):
                blk = impl.compute_unit(u, stores.artifacts)
                assert isinstance(blk, Block)
                acc.add(u.id, blk.row0, blk.col0, blk.values)
                acc.save()
            bar.update(1)
        acc.save(force=True)
        for u in p.produce:
            stores.artifacts.remove(u.id)


def _expand(order: list[int], c: int) -> torch.Tensor:
    o = torch.as_tensor(order, dtype=torch.long)
    return (o[:, None] * c + torch.arange(c)[None]).reshape(-1)


def assemble(plan: Plan, k_sorted: torch.Tensor) -> torch.Tensor:
    """K in the caller's sample order: the upper triangle mirrored when symmetric, rows/cols unsorted."""
    k = k_sorted
    if plan.sym:
        k = torch.triu(k) + torch.triu(k, 1).T
    out = torch.empty_like(k)
    r, c = _expand(plan.order1, plan.out_dim), _expand(plan.order2, plan.out_dim)
    out[r[:, None], c[None, :]] = k
    return out
