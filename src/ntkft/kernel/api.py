"""One function for the eNTK, methods selected by an enum; tiling, memory budget and resume."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from enum import Enum
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._io import save_tensors, write_json
from ..errors import ConfigError, KernelError
from . import factored as fac
from ._common import trim
from .jacobian import JacobianMethod
from .jvp import JvpMethod
from .params import ParamGroup, num_params, select_params

log = logging.getLogger(__name__)

DEFAULT_MAX_MEMORY = 4 * 2**30


class Method(str, Enum):
    AUTO = "auto"
    JACOBIAN = "jacobian"
    JVP = "jvp"
    FACTORED = "factored"


def _as_inputs(x, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(x, dict) or "input_ids" not in x or "attention_mask" not in x:
        raise ConfigError(f"{name} must be a dict with 'input_ids' and 'attention_mask' (as returned by encode)")
    ids, mask = x["input_ids"], x["attention_mask"]
    if ids.dim() != 2 or ids.shape != mask.shape:
        raise ConfigError(f"{name}: input_ids {tuple(ids.shape)} and attention_mask {tuple(mask.shape)} must be equal (N, T)")
    if ids.shape[0] == 0:
        raise KernelError(f"{name}: empty sample set (N = 0)")
    if (mask.sum(1) == 0).any():
        raise KernelError(f"{name}: row {int((mask.sum(1) == 0).nonzero()[0])} has no tokens")
    return ids, mask


def _batches(mask: torch.Tensor, size: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Sort rows by length (less padding per batch) and cut into batches; returns order and batches."""
    order = torch.argsort(mask.sum(1), stable=True)
    return order, [order[i:i + size] for i in range(0, len(order), size)]


def resolve_method(method: Method | str, model, params: dict) -> Method:
    try:
        method = Method(method)
    except ValueError:
        raise ConfigError(f"unknown method '{method}': use one of {', '.join(m.value for m in Method)}") from None
    if method != Method.AUTO:
        return method
    _, fallback = fac.plan(model, params)
    return Method.FACTORED if num_params(fallback) <= 0.05 * num_params(params) else Method.JACOBIAN


class _Checkpoint:
    """A work folder tied to one configuration: a changed configuration never reuses old tiles."""

    def __init__(self, root: Path | None, key: dict) -> None:
        self.root = root
        if root is None:
            return
        root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        man = root / "manifest.json"
        if man.exists() and json.loads(man.read_text()).get("digest") != digest:
            for f in root.iterdir():
                if f.name != "manifest.json":
                    f.unlink()
            log.warning("checkpoint folder %s belonged to another configuration; starting over", root)
        write_json(man, {"digest": digest, "key": key})

    def load(self, name: str) -> dict | None:
        if self.root is None or not (self.root / name).exists():
            return None
        from safetensors.torch import load_file

        return load_file(self.root / name)

    def save(self, name: str, tensors: dict) -> None:
        if self.root is not None:
            save_tensors(self.root / name, tensors)


def kernel_matrix(model, x1: dict, x2: dict | None = None, params: ParamGroup | str = "all",
                  method: Method | str = Method.AUTO, max_memory: int = DEFAULT_MAX_MEMORY,
                  batch_size: int | None = None, checkpoint_dir: str | Path | None = None,
                  progress: bool = True) -> torch.Tensor:
    """Unnormalised eNTK K_ij = <grad f(x_i), grad f(x_j)> (float64).

    `model` is a Readout; with C outputs the result is (N1*C, N2*C), rows ordered sample-major.
    `x2=None` gives the symmetric K(X1, X1), computing each tile of the upper triangle once.
    With `checkpoint_dir`, finished tiles are kept there and a rerun resumes from them.
    """
    ids1, m1 = _as_inputs(x1, "x1")
    ids2, m2 = _as_inputs(x2, "x2") if x2 is not None else (ids1, m1)
    sym = x2 is None
    sel = select_params(model, params)
    meth = resolve_method(method, model, sel)
    if max_memory <= 0:
        raise ConfigError(f"max_memory must be positive, got {max_memory}")
    c = int(getattr(model, "out_dim", 1))
    key = {"method": meth.value, "params": str(params), "n1": ids1.shape[0], "n2": ids2.shape[0], "sym": sym,
           "x1": hashlib.sha256(ids1.numpy().tobytes() + m1.numpy().tobytes()).hexdigest(),
           "x2": hashlib.sha256(ids2.numpy().tobytes() + m2.numpy().tobytes()).hexdigest(),
           "head": hashlib.sha256(model.head.weight.detach().double().cpu().numpy().tobytes()).hexdigest(),
           "P": num_params(sel), "batch_size": batch_size, "max_memory": max_memory}
    ckpt = _Checkpoint(Path(checkpoint_dir) if checkpoint_dir else None, key)
    was_training = model.training
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.eval()
    for p in model.parameters():  # the kernel of the chosen parameters, whatever a trainer froze
        p.requires_grad_(False)
    for p in sel.values():
        p.requires_grad_(True)
    try:
        if meth == Method.FACTORED:
            k = _factored(model, sel, ids1, m1, ids2, m2, sym, c, max_memory, batch_size, ckpt, progress)
        else:
            impl = JacobianMethod(model, sel) if meth == Method.JACOBIAN else JvpMethod(model, sel)
            k = _tiled(impl, ids1, m1, ids2, m2, sym, c, max_memory, batch_size, ckpt, progress)
        return k.detach()
    finally:
        model.train(was_training)
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])


def _expand(order: torch.Tensor, c: int) -> torch.Tensor:
    return (order[:, None] * c + torch.arange(c)[None]).reshape(-1)


def _unsort(k_sorted: torch.Tensor, order_r: torch.Tensor, order_c: torch.Tensor, c: int) -> torch.Tensor:
    k = torch.empty_like(k_sorted)
    r, cc = _expand(order_r, c), _expand(order_c, c)
    k[r[:, None], cc[None, :]] = k_sorted
    return k


def _tiled(impl, ids1, m1, ids2, m2, sym, c, max_memory, batch_size, ckpt, progress) -> torch.Tensor:
    per = impl.bytes_per_sample(ids1.shape[1], c)
    fit = max_memory // (2 * per)
    if fit < 1:
        raise KernelError(f"max_memory {max_memory / 2**20:.0f} MiB is too small for even one tile "
                          f"(this method needs ~{2 * per / 2**20:.0f} MiB for two samples)")
    size = int(min(batch_size or 8, fit))
    o1, b1 = _batches(m1, size)
    o2, b2 = (o1, b1) if sym else _batches(m2, size)
    n_tiles = len(b1) * (len(b1) + 1) // 2 if sym else len(b1) * len(b2)
    bar = tqdm(total=n_tiles, desc="eNTK tiles", disable=not progress, unit="tile")
    rows = []
    for i, bi in enumerate(b1):
        done = ckpt.load(f"row_{i:05d}.safetensors")
        ncols = i + 1 if sym else len(b2)
        if done is not None:
            rows.append(done["K"])
            bar.update(ncols)
            continue
        fi = impl.features(*trim(ids1[bi], m1[bi]))
        tiles = []
        for j in range(ncols):
            fj = fi if (sym and j == i) else impl.features(*trim(ids2[b2[j]], m2[b2[j]]))
            tiles.append(impl.tile(fi, fj))
            bar.update(1)
        row = torch.cat(tiles, 1)
        ckpt.save(f"row_{i:05d}.safetensors", {"K": row})
        rows.append(row)
    bar.close()
    n1, n2 = ids1.shape[0] * c, ids2.shape[0] * c
    k = torch.zeros(n1, n2, dtype=torch.float64)
    r0 = 0
    for row in rows:
        k[r0:r0 + row.shape[0], : row.shape[1]] = row
        r0 += row.shape[0]
    if sym:
        k = torch.tril(k) + torch.tril(k, -1).T
    return _unsort(k, o1, o2, c)


def _factored(model, sel, ids1, m1, ids2, m2, sym, c, max_memory, batch_size, ckpt, progress) -> torch.Tensor:
    entries, fallback = fac.plan(model, sel)
    if fallback:
        log.info("factored: %d parameter tensors (%d values) use the per-sample fallback", len(fallback),
                 num_params(fallback))
    # probe the longest sample once to size batches and decide memory vs disk
    longest = int(torch.argmax(m1.sum(1)))
    probe, _ = fac.capture(model, entries, fallback, *trim(ids1[longest:longest + 1], m1[longest:longest + 1]))
    per = fac.feature_bytes(probe)
    del probe
    if 3 * per > max_memory:
        raise KernelError(f"max_memory {max_memory / 2**20:.0f} MiB is too small for even one tile "
                          f"(one sample needs ~{3 * per / 2**20:.0f} MiB)")
    size = int(min(batch_size or 16, max(1, max_memory // (3 * per))))
    o1, b1 = _batches(m1, size)
    o2, b2 = (None, []) if sym else _batches(m2, size)
    total = per * (ids1.shape[0] + (0 if sym else ids2.shape[0]))
    tmp = None
    if ckpt.root is not None:  # checkpointed runs keep every finished batch on disk, to resume from
        store = fac.FeatureStore(ckpt.root)
    elif total <= max_memory // 2:
        store = fac.FeatureStore(None)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="ntkft-features-")
        store = fac.FeatureStore(Path(tmp.name))
    if store.root is not None:
        log.info("factored: ~%.0f MiB of features spill to %s", total / 2**20, store.root)
    jobs = [(k, ids1, m1, b) for k, b in enumerate(b1)] + [(100000 + k, ids2, m2, b) for k, b in enumerate(b2)]
    bar = tqdm(total=sum(len(b) for *_, b in jobs), desc="eNTK forward/backward", disable=not progress, unit="sample")
    t0 = time.time()
    for k, ids, m, b in jobs:
        if not store.has(k):
            feats, alias = fac.capture(model, entries, fallback, *trim(ids[b], m[b]))
            store.put(k, feats, alias)
            del feats
        bar.update(len(b))
    bar.close()
    log.info("factored: features in %.1fs", time.time() - t0)
    rows = [(k, len(b) * c) for k, b in enumerate(b1)]
    cols = None if sym else [(100000 + k, len(b) * c) for k, b in enumerate(b2)]
    partial = ckpt.load("gram_partial.safetensors")
    start = int(partial["next"].item()) if partial is not None else 0
    last = [time.time()]

    def save_partial(next_group: int, k: torch.Tensor) -> None:
        if ckpt.root is not None and time.time() - last[0] > 20:
            ckpt.save("gram_partial.safetensors", {"K": k, "next": torch.tensor(next_group)})
            last[0] = time.time()

    n_groups = fac.count_groups(entries, bool(fallback))
    bar = tqdm(total=n_groups, initial=start, desc="eNTK Gram by layer", disable=not progress, unit="layer")
    k = fac.gram(store, entries, rows, cols, bool(fallback), max_memory // 2, progress=bar.update, start=start,
                 k0=partial["K"] if partial is not None else None, checkpoint=save_partial)
    bar.close()
    if tmp is not None:
        tmp.cleanup()
    return _unsort(k, o1, o1 if sym else o2, c)


# ------------------------------------------------------------------ normalisations (THEORY.md sec. 3)


def normalise(k: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """The paper's empirical kernel matrix (1/N) J J^T (eq 5, 7); never divide twice."""
    return k / (n or k.shape[0])


def width_normalise(k: torch.Tensor, width: int) -> torch.Tensor:
    """Standard-parameterisation scaling (1/n) <grad f, grad f'> (eq 37)."""
    return k / width


def trace_outputs(k: torch.Tensor, c: int) -> torch.Tensor:
    """(N*C, M*C) -> (N, M): sum over outputs of K[(i, c), (j, c)]."""
    n, m = k.shape[0] // c, k.shape[1] // c
    return k.reshape(n, c, m, c).diagonal(dim1=1, dim2=3).sum(-1)
