"""Factored eNTK: exact K from layer factors, in bounded memory and disk for any N.

Plan: samples sorted by length and cut into length buckets; the layers (entries) are split into groups
so that one group's factors for all samples fit the memory budget, or `max_disk` when they spill.
Each group is one pass: a forward/backward per batch keeping that group's factors (produce units),
then Gram units that add the group's layers' contributions to K (contribution units). With one group
(the common case) the model runs once per batch; with several, the first pass caches the output of the last block
below each later group, whose pass starts there. For a linear layer a Gram entry is either the
"ghost" sum_{t,s} (a_it . a_js)(d_it . d_js) or the inner product of materialised per-sample
gradients D_i^T A_i (chunked along the longer side so the working set stays bounded); each layer takes the
cheaper one, counting the per-sample bmm at its lower rate (`psg_weight`), and layers reading one input (q, k, v)
take the pair form together. Embeddings use token matches, norms and biases their small per-sample gradients."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import nn

from ..errors import KernelError
from . import gemm
from .checkpoint import Store
from .contract import KernelModel, out_dim
from .layers import FALLBACK, Captured, Entry, capture, find_entries, verify
from .plan import Artifact, Block, GiB, Inputs, Options, Pass, Plan, Unit, batches, sort_by_length

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 2**20  # most per-sample-gradient bytes one Gram step materialises on a CPU
ROW_BYTES = 256 * 2**10  # ... and per sample: ~110 rows of 576 floats, enough for an efficient bmm
BATCH_BYTES = 512 * 2**20  # most factor bytes of one default CPU batch: the next batch then reuses the memory of
# its activations instead of taking fresh pages (SmolLM2, 65 MB per sample: batches of 8, N = 16 3.4-3.9 s against
# 3.8-4.1 s in one batch, N = 100 28-32 s against 33 s in batches of 13; MiniLM, 9 MB: unchanged at 16)
FEW_BATCHES = 16  # ... applied where the budget alone gives at most this many batches: with many, later batches
# reuse memory anyway and halving them costs per-batch work (SmolLM2 N = 1,000: 715 s in 125 batches, 689 s in 63)
SMALL_WORK = 1e9  # GEMM flops below which a kernel keeps torch's matmul: timing the libraries (~30 ms) costs more
ROW_BYTES_ONEDNN = 128 * 2**10  # ... ~55 rows when the Gram goes through oneDNN (see gemm.py): its GEMM likes short chunks
CPU_BATCH_OVERHEAD = 1.0  # a CPU batch's fixed cost in the length buckets, in sample rows: MiniLM N = 16 in batches
# of 5, 5, 6 by length 0.42-0.50 s against 0.47-0.52 s padded to 64 tokens in one (fresh processes, gc frozen)
GPU_BATCH_OVERHEAD = 8.0  # ... on a GPU, whose batches cost kernel launches
PSG_WEIGHT = 1.15  # per-sample gradients (bmm) against GEMM flops on torch's library (see psg_weight)
PSG_WEIGHT_ONEDNN = 2.7  # ... and against oneDNN's GEMM


class FactoredMethod:
    """Exact eNTK from per-layer factors (see the module docstring)."""

    exact = True
    name = "factored"

    def __init__(self, model: KernelModel, params: dict[str, nn.Parameter], options: Options) -> None:
        self.model, self.params, self.opt = model, params, options
        self.c = out_dim(model)
        self.chunk = chunk_bytes(options.max_memory, options.device)

    # ------------------------------------------------------------------ planning

    def probe(self, x1: Inputs) -> None:
        """Find and verify the layer entries on two real samples (`probe_inputs`: the shortest ones, cut short, of
        different lengths so that padding is exercised), and measure the bytes of factors per sample and token."""
        entries, fallback = find_entries(self.model, self.params)
        ids, mask = probe_inputs(x1)
        ids, mask = ids.to(self.opt.device), mask.to(self.opt.device)
        self.entries, self.fallback, cap, self.moved = verify(self.model, entries, fallback, ids, mask)
        if self.fallback:
            log.info("factored: %d parameter tensors (%d values) use the per-sample fallback", len(self.fallback),
                     sum(p.numel() for p in self.fallback.values()))
        b, t = ids.shape
        self.per_token: dict[str, float] = defaultdict(float)
        self.per_sample: dict[str, float] = defaultdict(float)
        for name, ten in cap.feats.items():
            owner = name.rsplit(".", 1)[0]
            nbytes = ten.numel() * ten.element_size()
            if ten.dim() >= 3 or name.endswith(".ids"):
                self.per_token[owner] += nbytes / (b * t)
            else:
                self.per_sample[owner] += nbytes / b
        self.dims = {name: tuple(ten.shape[2:]) if ten.dim() >= 3 else tuple(ten.shape[1:])
                     for name, ten in cap.feats.items()}
        self.alias = dict(cap.alias)
        del cap

    def entry_bytes(self, owner: str, n: int, length: int) -> float:
        """Bytes of `owner`'s factors for n samples padded to `length` tokens."""
        return n * (self.per_token.get(owner, 0.0) * length + self.per_sample.get(owner, 0.0))

    def plan(self, x1: Inputs, x2: Inputs | None) -> Plan:
        self.x1, self.x2 = x1, x2
        self.probe(x1)
        sym = x2 is None
        other = x1 if x2 is None else x2  # the column side (x1 itself when K is symmetric)
        o = self.opt
        owners = [e.name for e in self.entries] + ([FALLBACK] if self.fallback else [])
        longest = max(int(x1.lengths.max()), int(other.lengths.max()))
        per_sample_max = sum(self.entry_bytes(w, 1, longest) for w in owners)
        k_bytes = 2 * x1.n * (x2.n if x2 is not None else x1.n) * self.c ** 2 * 8
        # a batch in flight holds its factors, the activations autograd keeps (about as large) and the previous
        # batch's factors while they are written: ~3x its factors, kept within half the budget
        size = o.batch_size or 16
        if per_sample_max > 0:
            cap = (o.max_memory / 2) // (3 * per_sample_max)
            few = math.ceil((x1.n + (0 if sym else other.n)) / max(1, min(size, cap))) <= FEW_BATCHES
            if o.batch_size is None and o.device.type == "cpu" and few:
                cap = min(cap, BATCH_BYTES // per_sample_max)
            size = int(max(1, min(size, cap)))
        order1 = sort_by_length(x1)
        order2 = order1 if sym else sort_by_length(other)
        over = CPU_BATCH_OVERHEAD if o.device.type == "cpu" else GPU_BATCH_OVERHEAD
        b1 = batches(x1, order1, size, over)
        b2 = [] if sym else batches(other, order2, size, over)
        order1 = [i for b in b1 for i in b]
        order2 = order1 if sym else [i for b in b2 for i in b]
        sides = [(1, x1, b1)] + ([] if sym else [(2, other, b2)])

        def total(owner: str) -> float:
            return sum(self.entry_bytes(owner, len(b), int(x.lengths[b].max())) for _, x, bs in sides for b in bs)

        sizes = {w: total(w) for w in owners}
        need = sum(sizes.values())
        biggest = max(sizes.values(), default=0.0)
        batch_bytes = 3 * per_sample_max * size
        chunk = gram_chunk(self.chunk, x1.n * self.c + (0 if sym else other.n * self.c), o.device)  # >= oneDNN's
        room = o.max_memory - k_bytes - batch_bytes - 2 * chunk  # factors kept between the passes' stages
        if room <= 0:
            raise KernelError(f"max_memory {o.max_memory / GiB:.2f} GiB is too small for even one tile (one batch "
                              f"and K need ~{(batch_bytes + k_bytes + 2 * chunk) / GiB:.2f} GiB)")
        if biggest > room:
            raise KernelError(f"max_memory {o.max_memory / GiB:.2f} GiB cannot hold one layer's factors for all "
                              f"{x1.n + (0 if sym else other.n)} samples (~{biggest / GiB:.2f} GiB); use a larger "
                              "max_memory or method sketch")
        disk = math.inf if o.max_disk is None else float(o.max_disk)
        # on disk: room for the accumulator (K) and each file's header besides the factors themselves
        n_files = len(b1) + len(b2)
        disk_cap = 0.98 * disk - k_bytes / 2 - n_files * (16 << 10) if disk < math.inf else disk
        spill = need > room and disk_cap > room  # keep factors on disk when that gives bigger (fewer) layer groups
        groups = [owners] if need <= room else _split(owners, sizes, disk_cap if spill else room)
        if groups is None:
            raise KernelError(f"max_disk {disk / GiB:.2f} GiB cannot hold one layer's factors for all samples "
                              f"(~{biggest / GiB:.2f} GiB); raise max_disk or max_memory, or use method sketch")
        # several passes: 1/16 of the budget caches the block outputs the later passes start from (_plan_cuts)
        cache_cap = o.max_memory / 16 if len(groups) > 1 and biggest <= room - o.max_memory / 16 else 0.0
        if cache_cap:
            room -= cache_cap
            groups = _split(owners, sizes, disk_cap if spill else room) or groups
        n_r = x1.n * self.c
        n_c = n_r if sym else other.n * self.c
        passes = []
        for g, members in enumerate(groups):
            produce = [Unit(f"f{g}-s{side}-b{k}", "features", float(len(b)),
                            {"side": side, "rows": b, "group": g, "batch": k})
                       for side, _, bs in sides for k, b in enumerate(bs)]
            cost = {w: sizes[w] * (n_r + n_c) for w in members}
            passes.append(Pass(produce, _gram_units(g, members, cost, alias=self.alias)))
        self.groups = groups
        self.b1, self.b2 = b1, b2
        self.blocks, self.cuts = self._plan_cuts(groups) if cache_cap else (None, {})
        self.cache: dict[tuple[int, int, int], tuple[Any, torch.Tensor]] = {}  # (group, side, batch) -> (cut out, f)
        self.cache_cap = cache_cap
        self.sizes, self.room = sizes, room
        # GEMM work: forward + input gradient + per-sample gradients (6 flops per linear weight and token), Gram
        tokens = sum(int(x.lengths.sum()) for _, x, _ in sides)
        p_lin = sum(e.numel() for e in self.entries if e.kind in ("linear", "conv1d"))
        work = 6.0 * p_lin * tokens + float(n_r) * n_c * sum(p.numel() for p in self.params.values())
        f32 = any(p.dtype == torch.float32 for p in self.params.values())  # other dtypes never use oneDNN
        big = o.device.type == "cpu" and f32 and (work >= SMALL_WORK or gemm.forced())  # timing small ones costs more
        self.gemm = gemm.backend() if big else "torch"
        info = {"batch_size": size, "batches": [len(b) for b in b1], "groups": len(groups),
                "feature_bytes": int(need), "room_bytes": int(room), "batch_bytes": int(batch_bytes),
                "k_bytes": int(k_bytes), "largest_entry_bytes": int(biggest), "spill": spill, "gemm": self.gemm,
                "moved_to_fallback": self.moved, "skipped_blocks": {g: c + 1 for g, c in self.cuts.items()},
                "fallback_params": sum(p.numel() for p in self.fallback.values())}
        if len(groups) > 1:
            log.info("factored: %d layer groups, one forward/backward each (factors of all samples ~%.1f GiB)",
                     len(groups), need / GiB)
        elif spill:
            log.info("factored: ~%.1f GiB of factors spill to disk", need / GiB)
        return Plan("factored", x1.n, other.n, self.c, sym, order1, order2, passes, spill, info)

    # ------------------------------------------------------------------ computing

    def compute_unit(self, unit: Unit, store: Store) -> Artifact | Block:
        with gemm.using(self.gemm):
            if unit.kind == "features":
                return self._features(unit)
            return Block(0, 0, self._gram(unit, store))

    def _side(self, side: int) -> Inputs:
        x = self.x1 if side == 1 or self.x2 is None else self.x2
        return x

    def _features(self, unit: Unit) -> Artifact:
        x = self._side(unit.data["side"])
        g, side, k = unit.data["group"], unit.data["side"], unit.data["batch"]
        members = set(self.groups[g])
        entries = [e for e in self.entries if e.name in members]
        fallback = self.fallback if FALLBACK in members else {}
        ids, mask = x.take(unit.data["rows"])
        ids, mask = ids.to(self.opt.device), mask.to(self.opt.device)
        cached = self.cache.pop((g, side, k), None)
        if cached is not None and self.blocks is not None:  # a cache exists only for a planned cut
            with _skipping(self.blocks, self.cuts[g], cached[0]):
                cap = capture(self.model, entries, fallback, ids, mask)
            if self._same(cap, cached[1], members):
                return Artifact(cap.feats, {"alias": cap.alias})
            log.warning("factored: skipping the blocks before layer group %d changed f or the captured layers; "
                        "every pass now runs the whole forward", g)
            self.cuts, self.cache = {}, {}
        # record the block outputs the later passes start from (once: a pass without its cache records too)
        later = {h: c for h, c in self.cuts.items() if h > g and (h, side, k) not in self.cache}
        with _recording(self.blocks if later else None, later) as outs:
            cap = capture(self.model, entries, fallback, ids, mask)
        used = sum(_nbytes(v) for v in self.cache.values())
        for h, out in outs.items():
            item = (out, cap.outputs)
            if used + _nbytes(item) <= self.cache_cap:  # beyond the cap: that pass reruns the blocks
                self.cache[(h, side, k)] = item
                used += _nbytes(item)
        return Artifact(cap.feats, {"alias": cap.alias})

    def _plan_cuts(self, groups: list[list[str]]) -> tuple[nn.ModuleList | None, dict[int, int]]:
        """The model's block list and, for each layer group after the first, the last whole block of it that runs
        before the group's first layer. The first pass caches that block's output per batch; the group's own pass
        then starts there instead of rerunning the blocks below (checked on every batch: same f, same layers)."""
        found = _block_list(self.model)
        if found is None:
            return None, {}
        prefix, blocks = found
        pos = {name: i for i, (name, _) in enumerate(self.model.named_modules())}
        end = max(i for n, i in pos.items() if n == prefix or n.startswith(prefix + "."))
        cuts = {}
        for g, members in enumerate(groups[1:], 1):
            first = members[0]
            if FALLBACK in members or first not in pos:
                continue
            if first.startswith(prefix + "."):
                cut = int(first[len(prefix) + 1:].split(".")[0]) - 1
            else:  # after the whole block list (a final norm, the head): start after its last block
                cut = len(blocks) - 1 if pos[first] > end else -1
            if cut >= 0:
                cuts[g] = cut
        return blocks, cuts

    def _same(self, cap: Captured, f: torch.Tensor, members: set[str]) -> bool:
        """A pass that started at a cached block saw what the whole forward would: f (to rounding) and the same
        reached layers as the probe."""
        def owners(names: Any) -> set[str]:
            return {n.rsplit(".", 1)[0] for n in names} & members

        reached = owners(set(self.dims) | set(self.alias))
        if owners(set(cap.feats) | set(cap.alias)) != reached:
            return False
        scale = float(f.abs().max()) if f.numel() else 0.0
        return bool(torch.allclose(cap.outputs, f, rtol=1e-5, atol=1e-6 * max(scale, 1e-30)))

    def _read_chunks(self, owners: list[str]) -> list[list[str]]:
        """Consecutive entries whose factors for all samples fit the room left for factors."""
        out: list[list[str]] = [[]]
        used = 0.0
        for w in owners:
            if out[-1] and used + self.sizes.get(w, 0.0) > self.room:
                out.append([])
                used = 0.0
            out[-1].append(w)
            used += self.sizes.get(w, 0.0)
        return out

    def _load(self, store: Store, uid: str, names: list[str]) -> dict[str, torch.Tensor]:
        """A batch's factors on the compute device (spilled ones come back from the host); names sharing one tensor
        (aliases) share its copy, which is also how the pair form finds layers reading one input."""
        moved: dict[int, torch.Tensor] = {}
        out = {}
        for k, v in store.get(uid, names)[0].items():
            if id(v) not in moved:
                moved[id(v)] = v.to(self.opt.device, non_blocking=True)
            out[k] = moved[id(v)]
        return out

    def _gram(self, unit: Unit, store: Store) -> torch.Tensor:
        g = unit.data["group"]
        sym = self.x2 is None
        rows = [f"f{g}-s1-b{k}" for k in range(len(self.b1))]
        cols = rows if sym else [f"f{g}-s2-b{k}" for k in range(len(self.b2))]
        n_r = sum(len(b) for b in self.b1) * self.c
        n_c = n_r if sym else sum(len(b) for b in self.b2) * self.c
        dev = self.opt.device if self.opt.accumulate == "device" else torch.device("cpu")
        k = torch.zeros(n_r, n_c, dtype=torch.float64, device=dev)
        by_name = {e.name: e for e in self.entries}
        for chunk in self._read_chunks(unit.data["entries"]):  # one read per batch file for several layers
            wanted = [n for owner in chunk for n in _names(by_name.get(owner), owner)]
            rr = [self._load(store, uid, wanted) for uid in rows]
            cc = rr if sym else [self._load(store, uid, wanted) for uid in cols]
            todo = []
            for owner in chunk:
                e = by_name.get(owner)
                names = _names(e, owner)
                if names[0] not in rr[0]:
                    continue  # layer not reached by the forward pass
                r = [{n: x[n] for n in names if n in x} for x in rr]
                c = r if sym else [{n: x[n] for n in names if n in x} for x in cc]
                todo.append(Term(owner, e, names, r, c))
            for group in _by_input(todo):
                _contract(group, sym, k, self.chunk)
            del rr, cc, todo
        if not torch.isfinite(k).all():
            raise KernelError("the kernel contains NaN or inf (the model produced non-finite values)")
        return k


# ------------------------------------------------------------------ planning helpers


def chunk_bytes(max_memory: float, device: torch.device | str) -> int:
    """Most bytes of per-sample gradients one Gram step materialises: 1/32 of the budget, on a CPU also at most
    CHUNK_BYTES. Each chunk costs one bmm launch per batch, so small ones leave a GPU idle (SmolLM2, N = 1,000
    with 32 MiB chunks: ~110 chunks x 63 batches of launches per layer) and a CPU's bmm short of rows."""
    share = max(2**16, int(max_memory // 32))
    return share if torch.device(device).type == "cuda" else min(CHUNK_BYTES, share)


def gram_chunk(chunk: int, n: int, device: torch.device | str, onednn: bool = False) -> int:
    """The chunk a Gram over n rows uses: on a CPU ROW_BYTES per row (at least 4 MiB), so that each step holds
    ~110 rows of every sample's gradient whatever N (14 rows at N = 1,000 ran the bmm at 2/3 of its rate);
    ROW_BYTES_ONEDNN (~55 rows) where the Gram goes through oneDNN, whose Gram GEMM runs best on short chunks."""
    if torch.device(device).type == "cuda":
        return chunk
    return int(min(chunk, max(4 << 20, (ROW_BYTES_ONEDNN if onednn else ROW_BYTES) * n)))


def tri_blocks(n: int) -> int:
    """Row blocks of a symmetric Gram (block i times rows i.. only): fewer flops, but each GEMM is shorter. On a
    2-core x86 the best counts measured were 1-2 at N <= 100, 4 at 200-400 and 6 at 1,000 (sqrt(N / 25))."""
    return max(1, min(8, round(math.sqrt(n / 25))))


def _block_list(model: KernelModel) -> tuple[str, nn.ModuleList] | None:
    """The model's longest ModuleList of at least two modules (a transformer's blocks, run in order), by name."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) >= 2 and (best is None or len(mod) > len(best[1])):
            best = (name, mod)
    return best


def _tensors(out: Any) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]


def _nbytes(item: tuple[Any, torch.Tensor]) -> float:
    """Bytes of a cached (block output, f) pair."""
    return float(sum(t.numel() * t.element_size() for t in _tensors(item[0]) + [item[1]]))


@contextmanager
def _recording(blocks: nn.ModuleList | None, cuts: dict[int, int]) -> Iterator[dict[int, Any]]:
    """Collects {group: output of block cuts[group]} (detached copies; a tensor or a tuple of tensors/None)."""
    outs: dict[int, Any] = {}
    if blocks is None:
        yield outs
        return

    def hook(groups: list[int]) -> Callable[[nn.Module, Any, Any], None]:
        def fn(_mod: nn.Module, _args: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                kept: Any = out.detach().clone()
            elif isinstance(out, (tuple, list)) and all(t is None or isinstance(t, torch.Tensor) for t in out):
                kept = type(out)(t.detach().clone() if t is not None else None for t in out)
            else:
                return  # another kind of output: that group's pass runs the whole forward
            for g in groups:
                outs[g] = kept
        return fn

    by_cut: dict[int, list[int]] = defaultdict(list)
    for g, c in cuts.items():
        by_cut[c].append(g)
    handles = [blocks[c].register_forward_hook(hook(gs)) for c, gs in by_cut.items()]
    try:
        yield outs
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _skipping(blocks: nn.ModuleList, cut: int, out: Any) -> Iterator[None]:
    """Blocks 0..cut return block `cut`'s cached output without computing (the model's loop still calls them)."""
    def cached(*_args: Any, **_kwargs: Any) -> Any:
        return out

    for b in blocks[:cut + 1]:
        b.forward = cached
    try:
        yield
    finally:
        for b in blocks[:cut + 1]:
            del b.forward


def probe_rows(x: Inputs) -> list[int]:
    """The shortest sample and the shortest one of another length (cheap, and padding shows), or one sample."""
    order = sorted(range(x.n), key=lambda i: (int(x.lengths[i]), i))
    first = order[0]
    other = next((i for i in order if int(x.lengths[i]) != int(x.lengths[first])), order[1] if x.n > 1 else None)
    return [first] if other is None else sorted([first, other])


PROBE_TOKENS = (8, 12)  # real tokens kept of the shorter and the longer probe sample


def probe_inputs(x: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe batch: `probe_rows`, cut to their first 8 and 12 real tokens (lengths stay different) and padded on
    the side the data is. What the probe checks (each layer's factor formula, padding, samples kept apart) does
    not depend on length, and at full length it cost a tenth of a small kernel (SmolLM2, N = 16: 0.55 s of 5.8)."""
    rows = sorted(probe_rows(x), key=lambda i: (int(x.lengths[i]), i))
    ids, mask = x.take(rows)
    pads = x.ids[x.mask == 0]
    pad = pads[0] if pads.numel() else ids[0, 0]
    left = bool((mask[:, 0] == 0).any())  # some row starts with padding: the data is padded on the left
    real = [row[m.bool()] for row, m in zip(ids, mask)]
    keep = [r[:cap] for r, cap in zip(real, PROBE_TOKENS)]
    t = max(len(k) for k in keep)
    out_ids = torch.full((len(keep), t), int(pad), dtype=ids.dtype)
    out_mask = torch.zeros(len(keep), t, dtype=mask.dtype)
    for i, k in enumerate(keep):
        cols = slice(t - len(k), t) if left else slice(0, len(k))
        out_ids[i, cols], out_mask[i, cols] = k, 1
    return out_ids, out_mask


def _split(owners: list[str], sizes: dict[str, float], cap: float) -> list[list[str]] | None:
    """Contiguous groups of entries, each holding at most `cap` bytes of factors (None if one entry exceeds it)."""
    if any(sizes[w] > cap for w in owners):
        return None
    groups: list[list[str]] = [[]]
    used = 0.0
    for w in owners:
        if groups[-1] and used + sizes[w] > cap:
            groups.append([])
            used = 0.0
        groups[-1].append(w)
        used += sizes[w]
    return groups


def _gram_units(g: int, members: list[str], cost: dict[str, float], parts: int = 16,
                alias: dict[str, str] | None = None) -> list[Unit]:
    """Consecutive entries cut into about `parts` units of similar cost (resume and sharing granularity), never
    between layers reading one input (`alias`: "k_proj.A" -> "q_proj.A"), which the pair form contracts together."""
    reads = {n.rsplit(".", 1)[0]: t.rsplit(".", 1)[0] for n, t in (alias or {}).items()}  # owner -> input's owner
    target = sum(cost.values()) / parts
    units, cur, acc = [], [], 0.0
    for i, w in enumerate(members):
        cur.append(w)
        acc += cost[w]
        nxt = members[i + 1] if i + 1 < len(members) else None
        if acc >= target and not (nxt is not None and reads.get(nxt, nxt) in {reads.get(v, v) for v in cur}):
            units.append(cur)
            cur, acc = [], 0.0
    if cur:
        units.append(cur)
    return [Unit(f"g{g}-{k}", "gram", float(sum(cost[w] for w in u)), {"group": g, "entries": u})
            for k, u in enumerate(units)]


def _names(e: Entry | None, owner: str) -> list[str]:
    """The feature names one entry's Gram reads, first one present iff the entry was reached."""
    if e is None:
        return [owner + ".G"]
    if e.kind in ("linear", "conv1d"):
        return ([owner + ".D", owner + ".A"] if e.weight else []) + ([owner + ".Gb"] if e.bias else [])
    if e.kind == "embedding":
        return [owner + ".D", owner + ".ids"]
    return [owner + ".G"]


# ------------------------------------------------------------------ contractions (float64 accumulation)


class Term(NamedTuple):
    """One entry's factors in a Gram unit: its names and, per row (column) batch, its tensors."""

    owner: str
    e: Entry | None
    names: list[str]
    r: list[dict[str, torch.Tensor]]
    c: list[dict[str, torch.Tensor]]


def _by_input(terms: list[Term]) -> list[list[Term]]:
    """Terms in order, linear layers that read one input tensor (q, k and v; gate and up) grouped: the pair form
    then computes that input's token Gram once for all of them."""
    groups: dict[int, list[Term]] = {}
    out: list[list[Term]] = []
    for t in terms:
        if t.e is not None and t.e.kind in ("linear", "conv1d") and t.e.weight:
            a = t.r[0][t.names[1]]
            if id(a) in groups:
                groups[id(a)].append(t)
                continue
            groups[id(a)] = [t]
            out.append(groups[id(a)])
        else:
            out.append([t])
    return out


def _contract(group: list[Term], sym: bool, k: torch.Tensor, chunk: int = CHUNK_BYTES) -> None:
    """k += these entries' Gram contributions (upper tiles only when symmetric); a group of linear layers reading
    one input takes the pair form together (one input Gram, the sum of their output Grams) when that costs less
    than their materialised per-sample gradients."""
    owner, e, names, r, c = group[0]
    if e is None or e.kind in ("layernorm", "elementwise"):
        _vec(r, c, names[0], sym, k)
        return
    if e.kind == "embedding":
        _blockwise(k, r, c, sym, names[0],
                   lambda x, y, u: _ghost(x[names[1]], x[names[0]], y[names[1]], y[names[0]], match=True, upper=u))
        return
    for t in group:
        if t.e is not None and t.e.bias:
            _vec(t.r, t.c, t.owner + ".Gb", sym, k)
    if not e.weight:
        return
    a_name, d_names = names[1], [t.names[0] for t in group]
    din = r[0][a_name].shape[-1]
    douts = [t.r[0][t.names[0]].shape[-1] for t in group]
    s_r = sum(x[names[0]].shape[0] * x[names[0]].shape[1] for x in r)
    s_c = sum(x[names[0]].shape[0] * x[names[0]].shape[1] for x in c)
    n_r, n_c = k.shape
    ghost = 2.0 * _tile_tokens(r, c, names[0], sym) * (din + sum(douts))
    per_flop = 2.0 * (s_r + (0 if sym else s_c)) * psg_weight(gemm.fast(r[0][names[0]])) \
        + 2.0 * n_r * n_c / (1.6 if sym else 1)
    if ghost < per_flop * din * sum(douts):
        rg = [{a_name: x[a_name], **{t.names[0]: t.r[b][t.names[0]] for t in group}} for b, x in enumerate(r)]
        cg = rg if sym else [{a_name: x[a_name], **{t.names[0]: t.c[b][t.names[0]] for t in group}}
                             for b, x in enumerate(c)]
        _blockwise(k, rg, cg, sym, names[0],
                   lambda x, y, u: _ghost(x[a_name], [x[d] for d in d_names], y[a_name], [y[d] for d in d_names],
                                          upper=u))
        return
    for t in group:
        _materialised(t.r, t.c, t.names[1], t.names[0], sym, k, chunk)


def psg_weight(onednn: bool) -> float:
    """GEMM flops one per-sample-gradient flop costs: the bmm's inner dimension is a sample's length, and it stays on
    torch's bmm when the GEMMs go through oneDNN. Measured on SmolLM2 (2-core Zen 5): bmm 153-192 GFLOP/s, MKL's GEMM
    ~220, oneDNN's 420-440; with oneDNN the pair form then wins up to N ~ 30 (N = 16: Gram 1.1 s against 1.7 s)."""
    return PSG_WEIGHT_ONEDNN if onednn else PSG_WEIGHT


def _tile_tokens(r: list[dict[str, torch.Tensor]], c: list[dict[str, torch.Tensor]], name: str, sym: bool) -> float:
    """Token pairs the pair form visits: every tile of (row batch, column batch), upper tiles only when symmetric."""
    sr = [x[name].shape[0] * x[name].shape[1] for x in r]
    if sym:  # a batch's tile with itself: its upper triangle in four row steps, ~5/8 of the tile (_ghost)
        return float(sum(a * b for i, a in enumerate(sr) for b in sr[i + 1:]) + 0.625 * sum(a * a for a in sr))
    return float(sum(sr) * sum(x[name].shape[0] * x[name].shape[1] for x in c))


def _vec(r: list[dict[str, torch.Tensor]], c: list[dict[str, torch.Tensor]], name: str, sym: bool, k: torch.Tensor) -> None:
    gr = torch.cat([x[name].reshape(x[name].shape[0], -1) for x in r])
    gc = gr if sym else torch.cat([x[name].reshape(x[name].shape[0], -1) for x in c])
    k += gemm.mm_t(gr, gc).to(k.device, torch.float64)


def _rep(a: torch.Tensor, rows: int) -> torch.Tensor:
    """Per-sample A repeated for each of the C outputs (rows = samples * C)."""
    return a if a.shape[0] == rows else a.repeat_interleave(rows // a.shape[0], 0)


def _psg(batches: list[dict[str, torch.Tensor]], a_name: str, d_name: str, o0: int, o1: int, out: torch.Tensor,
         by_input: bool = False) -> None:
    """out[rows] = D[:, :, o0:o1]^T A per sample, flattened: per-sample gradients of output rows o0..o1; with
    `by_input` A[:, :, o0:o1]^T D instead, the transposed gradients of input columns o0..o1. One bmm per batch
    (torch's, also where the Gram goes through oneDNN: one oneDNN product per sample was slower, 9.0 s against
    7.0 s for SmolLM2's layers at N = 100, its inner dimension being the sample's length)."""
    off = 0
    for x in batches:
        d, a = x[d_name], x[a_name]
        n = d.shape[0]
        a = _rep(a, n)
        lhs, rhs = (a, d) if by_input else (d, a)
        torch.bmm(lhs[:, :, o0:o1].transpose(1, 2), rhs, out=out[off:off + n].view(n, o1 - o0, rhs.shape[-1]))
        off += n


def _materialised(r: list[dict[str, torch.Tensor]], c: list[dict[str, torch.Tensor]], a_name: str, d_name: str, sym: bool,
                  k: torch.Tensor, chunk: int = CHUNK_BYTES) -> None:
    """k += <G_i, G_j> over materialised per-sample gradients, a chunk of rows of the longer side at a time (the
    Gram is the same for G and its transpose; the bmm and the GEMM both want many rows)."""
    n_r, n_c = k.shape
    din, dout = r[0][a_name].shape[-1], r[0][d_name].shape[-1]
    dtype, dev = r[0][d_name].dtype, r[0][d_name].device
    es = r[0][d_name].element_size()
    by_input = din > dout
    rows, width = (din, dout) if by_input else (dout, din)
    chunk = gram_chunk(chunk, max(n_r, n_c), dev, gemm.fast(r[0][d_name]))
    step = max(1, min(rows, chunk // max(1, es * width * max(n_r, n_c))))
    buf_r = torch.empty(n_r * step * width, dtype=dtype, device=dev)  # each chunk a contiguous (rows, w) view
    buf_c = buf_r if sym else torch.empty(n_c * step * width, dtype=dtype, device=dev)
    blocks = tri_blocks(n_r) if sym else 1
    cuts = [round(i * n_r / blocks) for i in range(blocks + 1)]
    for o0 in range(0, rows, step):
        o1 = min(rows, o0 + step)
        w = (o1 - o0) * width
        gr = buf_r[:n_r * w].view(n_r, w)
        _psg(r, a_name, d_name, o0, o1, gr, by_input)
        if sym:
            for s, e in zip(cuts[:-1], cuts[1:]):
                if e > s:
                    k[s:e, s:] += gemm.mm_t(gr[s:e], gr[s:]).to(k.device, torch.float64)
        else:
            gc = buf_c[:n_c * w].view(n_c, w)
            _psg(c, a_name, d_name, o0, o1, gc, by_input)
            k += gemm.mm_t(gr, gc).to(k.device, torch.float64)


def _ghost(ai: torch.Tensor, di: torch.Tensor | list[torch.Tensor], aj: torch.Tensor,
           dj: torch.Tensor | list[torch.Tensor], match: bool = False, upper: bool = False) -> torch.Tensor:
    """sum_{t,s} <a_it, a_js> <d_it, d_js> (token equality instead of <a, a> for embeddings), (rows_i, rows_j);
    with lists of D (layers reading one input) sum_{t,s} <a_it, a_js> sum_l <d_l,it, d_l,js>.
    A (or ids) has one row per sample; D has samples * C rows. `upper` (a tile of a batch with itself): only
    entries on or above the diagonal are needed (K's lower triangle is mirrored), so rows go in four steps, each
    against the columns from its first row on (~5/8 of the products)."""
    dis = di if isinstance(di, list) else [di]
    djs = dj if isinstance(dj, list) else [dj]
    ni, ti = dis[0].shape[:2]
    nj, tj = djs[0].shape[:2]
    ai, aj = _rep(ai, ni), _rep(aj, nj)
    out = torch.zeros(ni, nj, dtype=torch.float64, device=dis[0].device)
    dj2 = [d.reshape(nj * tj, -1) for d in djs]
    aj2 = aj.reshape(nj * tj, -1) if not match else aj.reshape(1, -1)
    step = max(1, int(2**24 // max(1, ti * nj * tj)))  # bound the (rows x cols) scratch to ~16M entries
    if upper:
        step = min(step, -(-ni // 4))
    for s in range(0, ni, step):
        c0 = s if upper else 0  # first column sample
        dd = gemm.mm_t(dis[0][s:s + step].reshape(-1, dis[0].shape[-1]), dj2[0][c0 * tj:])
        for d, d2 in zip(dis[1:], dj2[1:]):
            dd += gemm.mm_t(d[s:s + step].reshape(-1, d.shape[-1]), d2[c0 * tj:])
        if match:
            dd *= ai[s:s + step].reshape(-1, 1) == aj2[:, c0 * tj:]
        else:
            dd *= gemm.mm_t(ai[s:s + step].reshape(-1, ai.shape[-1]), aj2[c0 * tj:])
        out[s:s + step, c0:] = dd.reshape(-1, ti, nj - c0, tj).sum((1, 3)).double()
    return out


def _blockwise(k: torch.Tensor, r: list[dict[str, torch.Tensor]], c: list[dict[str, torch.Tensor]], sym: bool, d_name: str,
               fn: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], bool], torch.Tensor]) -> None:
    """k += fn(batch_i, batch_j, upper) tile by tile (upper tiles only when symmetric, and there a batch's tile with
    itself needs only its upper triangle: upper=True); rows are D's rows."""
    def offsets(bs: list[dict[str, torch.Tensor]]) -> list[int]:
        out = [0]
        for x in bs:
            out.append(out[-1] + x[d_name].shape[0])
        return out

    off_r = offsets(r)
    off_c = off_r if sym else offsets(c)
    for i, x in enumerate(r):
        for j, y in enumerate(c):
            if sym and j < i:
                continue
            t = fn(x, y, sym and i == j)
            k[off_r[i]:off_r[i] + t.shape[0], off_c[j]:off_c[j] + t.shape[1]] += t.to(k.device)
