"""Factored eNTK: one forward and one backward pass per sample batch, per-sample gradients rebuilt
layer by layer from captured layer inputs A and output gradients D.

For a linear map the per-sample weight gradient is D_i^T A_i, so a kernel entry is either the
"ghost" contraction sum_{t,s} (a_it . a_js)(d_it . d_js) or the inner product of materialised
per-sample gradients; each layer takes the cheaper one. Embeddings use token matches, norms and
biases materialise their small per-sample gradients, and any other parameter falls back to one
autograd call per sample. Features of all samples go to a `FeatureStore` (memory or disk), then
the Gram matrix is accumulated entry by entry in float64 with bounded memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ._common import check_finite, on_model_device, outputs


@dataclass
class Entry:
    """A module whose directly-owned selected parameters the factored method handles."""

    name: str
    module: nn.Module
    kind: str  # linear | conv1d | embedding | layernorm | rmsnorm
    weight: bool
    bias: bool


def _kind(mod: nn.Module) -> str | None:
    cls = type(mod).__name__
    if isinstance(mod, nn.Linear):
        return "linear"
    if cls == "Conv1D" and hasattr(mod, "nf"):
        return "conv1d"
    if isinstance(mod, nn.Embedding):
        return "embedding"
    if isinstance(mod, nn.LayerNorm) and mod.elementwise_affine:
        return "layernorm"
    if cls.endswith("RMSNorm") and hasattr(mod, "weight") and (hasattr(mod, "variance_epsilon") or hasattr(mod, "eps")):
        return "rmsnorm"
    return None


def plan(model: nn.Module, params: dict[str, nn.Parameter]) -> tuple[list[Entry], dict[str, nn.Parameter]]:
    """Split the selected parameters into factored entries and the generic fallback."""
    selected = {id(p): n for n, p in params.items()}
    owners: dict[int, int] = {}
    for mod in model.modules():
        for p in mod.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    entries, covered = [], set()
    for name, mod in model.named_modules():
        kind = _kind(mod)
        direct = {n: p for n, p in mod.named_parameters(recurse=False) if id(p) in selected}
        if kind is None or not direct or set(direct) - {"weight", "bias"}:
            continue
        if any(owners[id(p)] > 1 for p in direct.values()):  # tied: let the generic path sum both uses
            continue
        entries.append(Entry(name, mod, kind, "weight" in direct, "bias" in direct))
        covered.update(id(p) for p in direct.values())
    fallback = {n: p for n, p in params.items() if id(p) not in covered}
    return entries, fallback


def _norm_hat(entry: Entry, x: torch.Tensor) -> torch.Tensor:
    mod = entry.module
    if entry.kind == "layernorm":
        return nn.functional.layer_norm(x, mod.normalized_shape, None, None, mod.eps)
    eps = getattr(mod, "variance_epsilon", None) or getattr(mod, "eps", 1e-6)
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def capture(model: nn.Module, entries: list[Entry], fallback: dict, ids: torch.Tensor,
            mask: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """One forward + backward on a batch; returns per-sample features (rows = sample * C + output)
    and an alias map for layer inputs shared by several entries (q, k, v read the same tensor)."""
    inputs: dict[str, torch.Tensor] = {}
    outs: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_mod, args, out):
            inputs[name] = args[0]
            outs[name] = out
        return fn

    ids, mask = on_model_device(model, ids, mask)
    handles = [e.module.register_forward_hook(hook(e.name)) for e in entries]
    try:
        f = outputs(model, ids, mask)
    finally:
        for h in handles:
            h.remove()
    check_finite(f.detach(), "the model output f(x)")
    b, c = f.shape
    names = [e.name for e in entries if e.name in outs and outs[e.name].requires_grad]
    fb_names = list(fallback)
    d_per_c, fb_per_c = [], []
    for k in range(c):
        last = k == c - 1
        grads = torch.autograd.grad(f[:, k].sum(), [outs[n] for n in names], retain_graph=bool(fb_names) or not last,
                                    allow_unused=True) if names else []
        d_per_c.append(dict(zip(names, grads)))
        if fb_names:
            rows = []
            for i in range(b):
                g = torch.autograd.grad(f[i, k], [fallback[n] for n in fb_names],
                                        retain_graph=not (last and i == b - 1), allow_unused=True)
                rows.append(torch.cat([(x if x is not None else torch.zeros_like(fallback[n])).reshape(-1)
                                       for x, n in zip(g, fb_names)]))
            fb_per_c.append(torch.stack(rows))

    def rows_of(per_c: list[torch.Tensor]) -> torch.Tensor:  # (B, ...) per output -> (B*C, ...)
        return per_c[0] if c == 1 else torch.stack(per_c, 1).flatten(0, 1)

    def rep(x: torch.Tensor) -> torch.Tensor:
        return x if c == 1 else x.repeat_interleave(c, 0)

    feats: dict[str, torch.Tensor] = {}
    alias: dict[str, str] = {}
    seen_inputs: dict[tuple, str] = {}
    for e in entries:
        if e.name not in outs:
            continue
        x = inputs[e.name].detach()
        ds = [d_per_c[k].get(e.name) for k in range(c)]
        ds = [torch.zeros_like(outs[e.name]) if d is None else d for d in ds]
        d = rows_of(ds)
        if e.kind in ("linear", "conv1d"):
            if x.dim() == 2:
                x, d = x[:, None], d[:, None]
            if e.weight:
                key = (x.data_ptr(), tuple(x.shape))
                if key in seen_inputs:
                    alias[e.name + ".A"] = seen_inputs[key]
                else:
                    seen_inputs[key] = e.name + ".A"
                    feats[e.name + ".A"] = rep(x)
                feats[e.name + ".D"] = d
            if e.bias:
                feats[e.name + ".Gb"] = d.sum(1)
        elif e.kind == "embedding":
            tok = x.clone()
            if e.module.padding_idx is not None:  # the padding row gets no gradient
                d = d * (tok != e.module.padding_idx).unsqueeze(-1).to(d.dtype).repeat_interleave(c, 0)
            feats[e.name + ".ids"] = rep(tok)
            feats[e.name + ".D"] = d
        else:
            xh = rep(_norm_hat(e, x))
            g = []
            if e.weight:
                g.append((d * xh).flatten(1, -2).sum(1) if d.dim() > 2 else d * xh)
            if e.bias:
                g.append(d.flatten(1, -2).sum(1) if d.dim() > 2 else d)
            feats[e.name + ".G"] = torch.cat(g, -1)
    if fb_names:
        feats["__fallback__.G"] = rows_of(fb_per_c)
    first: dict[tuple, str] = {}
    for name in list(feats):  # autograd may hand the same tensor to two entries (BERT's embedding sums)
        t = feats[name]
        key = (t.data_ptr(), tuple(t.shape), t.stride())
        if key in first:
            alias[name] = first[key]
            del feats[name]
        else:
            first[key] = name
    return feats, alias


class FeatureStore:
    """Per-batch features in memory, or spilled to safetensors files (one per batch) in `root`."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.mem: dict[int, tuple[dict, dict]] = {}
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)

    def path(self, k: int) -> Path:
        return self.root / f"feat_{k:05d}.safetensors"

    def has(self, k: int) -> bool:
        return k in self.mem or (self.root is not None and self.path(k).exists())

    def put(self, k: int, feats: dict, alias: dict) -> None:
        if self.root is None:
            self.mem[k] = (feats, alias)
            return
        import os

        from safetensors.torch import save_file

        tmp = self.path(k).with_suffix(".tmp")  # scratch features: rename for atomicity, no fsync
        save_file({n: t.cpu().contiguous() for n, t in feats.items()}, str(tmp), metadata={"alias": json.dumps(alias)})
        os.replace(tmp, self.path(k))

    def get(self, k: int, names: list[str]) -> dict[str, torch.Tensor]:
        """The named tensors of batch k (aliases resolved); missing names are left out."""
        if self.root is None:
            feats, alias = self.mem[k]
            return {n: feats[alias.get(n, n)] for n in names if alias.get(n, n) in feats}
        from safetensors import safe_open

        with safe_open(self.path(k), framework="pt") as fh:
            alias = json.loads(fh.metadata().get("alias", "{}"))
            keys = set(fh.keys())
            return {n: fh.get_tensor(alias.get(n, n)) for n in names if alias.get(n, n) in keys}


def _linear_cost(n_r, n_c, s_r, s_c, din, dout, sym: bool) -> tuple[float, float]:
    ghost = 2.0 * s_r * s_c * (din + dout) / (2 if sym else 1)
    mat = 2.0 * (s_r + (0 if sym else s_c)) * din * dout + 2.0 * n_r * n_c * din * dout
    return ghost, mat


def _ghost(ai, di, aj, dj, match: bool = False) -> torch.Tensor:
    """sum_{t,s} <a_it, a_js> <d_it, d_js> (or token equality for embeddings), (ni, nj)."""
    ni, ti = di.shape[:2]
    nj, tj = dj.shape[:2]
    out = torch.zeros(ni, nj, dtype=torch.float64)
    dj2 = dj.reshape(nj * tj, -1)
    step = max(1, int(2**24 // max(1, ti * nj * tj)))  # bound the (rows x cols) scratch to ~16M entries
    for s in range(0, ni, step):
        dd = di[s:s + step].reshape(-1, di.shape[-1]) @ dj2.T
        if match:
            aa = ai[s:s + step].reshape(-1, 1) == aj.reshape(1, -1)
        else:
            aa = ai[s:s + step].reshape(-1, ai.shape[-1]) @ aj.reshape(nj * tj, -1).T
        out[s:s + step] = (dd * aa).reshape(-1, ti, nj, tj).sum((1, 3)).double()
    return out


def _stack_weight_grads(batches: list[dict], a_name: str, d_name: str) -> torch.Tensor:
    """Per-sample weight gradients D_i^T A_i of all batches, written straight into one (N, dout*din) matrix."""
    n = sum(b[d_name].shape[0] for b in batches)
    dout, din = batches[0][d_name].shape[-1], batches[0][a_name].shape[-1]
    g = torch.empty(n, dout * din, dtype=batches[0][d_name].dtype, device=batches[0][d_name].device)
    off = 0
    for b in batches:
        a, d = b[a_name], b[d_name]
        torch.bmm(d.transpose(1, 2), a, out=g[off:off + a.shape[0]].view(a.shape[0], dout, din))
        off += a.shape[0]
    return g


def gram(store: FeatureStore, entries: list[Entry], rows: list[tuple[int, int]], cols: list[tuple[int, int]] | None,
         has_fallback: bool, budget_bytes: int, progress=None, start: int = 0, k0: torch.Tensor | None = None,
         checkpoint=None) -> torch.Tensor:
    """Accumulate K over entries. rows/cols: (batch id, number of rows) in order; cols None = symmetric.
    `start`/`k0` resume from a partial sum; `checkpoint(next_group, k)` is offered after each group."""
    sym = cols is None
    cols = rows if sym else cols
    n_r, n_c = sum(n for _, n in rows), sum(n for _, n in cols)
    off_r = [sum(n for _, n in rows[:i]) for i in range(len(rows))]
    off_c = [sum(n for _, n in cols[:i]) for i in range(len(cols))]
    k = torch.zeros(n_r, n_c, dtype=torch.float64) if k0 is None else k0.clone()
    groups: list[tuple[str, list[str]]] = []
    for e in entries:
        if e.kind in ("linear", "conv1d"):
            if e.weight:
                groups.append(("linear", [e.name + ".A", e.name + ".D"]))
            if e.bias:
                groups.append(("vec", [e.name + ".Gb"]))
        elif e.kind == "embedding":
            groups.append(("embedding", [e.name + ".ids", e.name + ".D"]))
        else:
            groups.append(("vec", [e.name + ".G"]))
    if has_fallback:
        groups.append(("vec", ["__fallback__.G"]))
    for gi, (kind, names) in enumerate(groups):
        if gi < start:
            continue
        r = [store.get(b, names) for b, _ in rows]
        c = r if sym else [store.get(b, names) for b, _ in cols]
        if names[0] not in r[0]:
            continue  # module not reached by the forward pass
        if kind == "vec":
            gr = torch.cat([x[names[0]] for x in r])
            gc = gr if sym else torch.cat([x[names[0]] for x in c])
            k += (gr @ gc.T).double().cpu()
        elif kind == "embedding":
            _blockwise(k, r, c, off_r, off_c, sym, lambda x, y, nm=names: _ghost(x[nm[0]], x[nm[1]], y[nm[0]],
                                                                                  y[nm[1]], match=True))
        else:
            din, dout = r[0][names[0]].shape[-1], r[0][names[1]].shape[-1]
            s_r = sum(x[names[1]].shape[0] * x[names[1]].shape[1] for x in r)
            s_c = sum(x[names[1]].shape[0] * x[names[1]].shape[1] for x in c)
            ghost, mat = _linear_cost(n_r, n_c, s_r, s_c, din, dout, sym)
            if ghost < mat or (n_r + n_c) * din * dout * 4 > budget_bytes:
                _blockwise(k, r, c, off_r, off_c, sym, lambda x, y, nm=names: _ghost(x[nm[0]], x[nm[1]], y[nm[0]],
                                                                                      y[nm[1]]))
            else:
                gr = _stack_weight_grads(r, names[0], names[1])
                if sym:  # upper-triangle tiles only: batch i against batches i, i+1, ... in one GEMM
                    for (_, n), off in zip(rows, off_r):
                        k[off:off + n, off:] += (gr[off:off + n] @ gr[off:].T).double().cpu()
                else:
                    k += (gr @ _stack_weight_grads(c, names[0], names[1]).T).double().cpu()
        if progress is not None:
            progress(1)
        if checkpoint is not None:
            checkpoint(gi + 1, k)
    if sym:
        k = torch.triu(k) + torch.triu(k, 1).T  # ghost tiles fill the upper triangle only
    return check_finite(k, "the kernel")


def _blockwise(k, r, c, off_r, off_c, sym, fn) -> None:
    for i, x in enumerate(r):
        for j, y in enumerate(c):
            if sym and j < i:
                continue
            t = fn(x, y)
            k[off_r[i]:off_r[i] + t.shape[0], off_c[j]:off_c[j] + t.shape[1]] += t


def feature_bytes(feats: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in feats.values())


def count_groups(entries: list[Entry], has_fallback: bool) -> int:
    n = sum((2 if (e.kind in ("linear", "conv1d") and e.weight and e.bias) else 1) for e in entries)
    return n + int(has_fallback)
