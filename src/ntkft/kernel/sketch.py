"""Sketched eNTK: K_hat = S S^T with S the per-sample gradients under a seeded random projection, unbiased for K.

The projection is block-diagonal over layers: layer l gets k_l of the k = `sketch_dim` coordinates
(k_l proportional to its share of the kernel's trace on the probe samples, at least 1), and each block is
Kronecker-structured, so per-sample gradients are never formed. For a linear layer with per-sample
gradient D^T A = sum_t d_t a_t^T and Gaussian U (dout x k_l), V (din x k_l):

    s_m = (1/sqrt(k_l)) u_m^T D^T A v_m = (1/sqrt(k_l)) sum_t (D U)_tm (A V)_tm,

and E[(u (x) v)(u (x) v)^T] = I, so E[<s_i, s_j>] = <g_i, g_j>. Embeddings use one seeded Gaussian row per
token id in place of A V; norms, biases and fallback parameters a dense Gaussian. The cost is per token
(T k_l (din + dout) per layer and sample), the memory N k, and the error of each entry ~ k^(-1/2)."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, KernelError
from . import gemm
from .checkpoint import Store
from .contract import KernelModel, out_dim
from .factored import FactoredMethod, _ghost, probe_rows
from .layers import FALLBACK, Entry, capture
from .plan import Artifact, Block, GiB, Inputs, Options, Pass, Plan, Unit, batches, sort_by_length

log = logging.getLogger(__name__)


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def _gauss(shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def allocate(k: int, weights: list[float]) -> list[int]:
    """k coordinates over blocks in proportion to `weights` (each block >= 1; largest remainders)."""
    n = len(weights)
    if k < n:
        raise ConfigError(f"sketch_dim: must be at least the number of sketched layers ({n}) for this model, got {k}",
                          param="sketch_dim")
    total = sum(weights)
    share = [(w / total if total > 0 else 1 / n) * (k - n) for w in weights]
    out = [1 + int(s) for s in share]
    rest = k - sum(out)
    for i in sorted(range(n), key=lambda i: share[i] - int(share[i]), reverse=True)[:rest]:
        out[i] += 1
    return out


class SketchMethod:
    """Unbiased sketch of the eNTK from layer factors (see the module docstring)."""

    exact = False
    name = "sketch"

    def __init__(self, model: KernelModel, params: dict[str, nn.Parameter], options: Options) -> None:
        if options.sketch_dim is None or options.sketch_dim < 1:
            raise ConfigError("sketch_dim: method sketch needs an integer sketch_dim >= 1")
        self.model, self.params, self.opt = model, params, options
        self.c = out_dim(model)
        self.k = int(options.sketch_dim)
        self._factors = FactoredMethod(model, params, options)
        self._token_rows: dict[tuple[str, int], torch.Tensor] = {}

    # ------------------------------------------------------------------ planning

    def plan(self, x1: Inputs, x2: Inputs | None) -> Plan:
        self.x1, self.x2 = x1, x2
        fm = self._factors
        fm.probe(x1)
        self.entries, self.fallback = fm.entries, fm.fallback
        owners = [e.name for e in self.entries] + ([FALLBACK] if self.fallback else [])
        self.dims = dict(zip(owners, allocate(self.k, self._trace_shares(x1, owners))))
        sym = x2 is None
        other = x1 if x2 is None else x2
        o = self.opt
        longest = max(int(x1.lengths.max()), int(other.lengths.max()))
        per_sample = sum(fm.entry_bytes(w, 1, longest) for w in owners)
        size = int(max(1, min(o.batch_size or 16, o.max_memory // max(1.0, 4 * per_sample))))
        self.b1 = batches(x1, sort_by_length(x1), size)
        self.b2 = [] if sym else batches(other, sort_by_length(other), size)
        order1 = [i for b in self.b1 for i in b]
        order2 = order1 if sym else [i for b in self.b2 for i in b]
        n_r, n_c = x1.n * self.c, other.n * self.c
        s_bytes = (n_r + (0 if sym else n_c)) * self.k * 4
        k_bytes = n_r * n_c * 8
        if k_bytes + 3 * per_sample * size > o.max_memory:
            raise KernelError(f"max_memory {o.max_memory / GiB:.2f} GiB is too small for even one tile "
                              f"(K alone needs {k_bytes / GiB:.2f} GiB)")
        spill = s_bytes + k_bytes + 3 * per_sample * size > o.max_memory
        produce = [Unit(f"s{side}-b{i}", "sketch", float(len(b)), {"side": side, "rows": b})
                   for side, bs in ((1, self.b1), (2, self.b2)) for i, b in enumerate(bs)]
        blocks = max(1, min(len(self.b1), 8))
        cuts = [round(i * len(self.b1) / blocks) for i in range(blocks + 1)]
        contribute = [Unit(f"k{i}", "gram", float(cuts[i + 1] - cuts[i]), {"batches": [cuts[i], cuts[i + 1]]})
                      for i in range(blocks) if cuts[i + 1] > cuts[i]]
        f32 = any(p.dtype == torch.float32 for p in self.params.values())  # other dtypes never use oneDNN
        info = {"sketch_dim": self.k, "layers": len(owners), "batch_size": size, "seed": o.seed,
                "dims_min": min(self.dims.values()), "dims_max": max(self.dims.values()),
                "gemm": gemm.backend() if o.device.type == "cpu" and f32 else "torch"}
        return Plan("sketch", x1.n, other.n, self.c, sym, order1, order2, [Pass(produce, contribute)],
                    spill, info)

    def _trace_shares(self, x1: Inputs, owners: list[str]) -> list[float]:
        """Each layer's share of diag(K) on the probe samples: k_l in proportion minimises the summed variance."""
        rows = probe_rows(x1)
        ids, mask = x1.take(rows)
        cap = capture(self.model, self.entries, self.fallback, ids.to(self.opt.device), mask.to(self.opt.device))
        by = {e.name: e for e in self.entries}
        out = []
        for w in owners:
            e = by.get(w)
            f = cap.feats
            get: Callable[..., Any] = lambda n, f=f: f.get(cap.alias.get(n, n))  # noqa: E731
            tr = 0.0
            if e is None or e.kind in ("layernorm", "elementwise"):
                g = get(w + ".G")
                tr = float(g.double().pow(2).sum()) if g is not None else 0.0
            elif e.kind == "embedding" and get(w + ".D") is not None:
                d, t = get(w + ".D"), get(w + ".ids")
                tr = sum(float(_ghost(t[i:i + 1], d[i * self.c:(i + 1) * self.c], t[i:i + 1],
                                      d[i * self.c:(i + 1) * self.c], match=True).trace()) for i in range(len(rows)))
            elif get(w + ".D") is not None:
                if e.weight:
                    a, d = get(w + ".A"), get(w + ".D")
                    tr += sum(float(_ghost(a[i:i + 1], d[i * self.c:(i + 1) * self.c], a[i:i + 1],
                                           d[i * self.c:(i + 1) * self.c]).trace()) for i in range(len(rows)))
                if e.bias:
                    tr += float(get(w + ".Gb").double().pow(2).sum())
            elif e.bias and get(w + ".Gb") is not None:
                tr = float(get(w + ".Gb").double().pow(2).sum())
            out.append(max(tr, 0.0))
        return out

    # ------------------------------------------------------------------ computing

    def compute_unit(self, unit: Unit, store: Store) -> Artifact | Block:
        if unit.kind == "sketch":
            x = self.x1 if unit.data["side"] == 1 or self.x2 is None else self.x2
            ids, mask = x.take(unit.data["rows"])
            cap = capture(self.model, self.entries, self.fallback, ids.to(self.opt.device), mask.to(self.opt.device))
            return Artifact({"S": self._project(cap.feats, cap.alias)})
        a, b = unit.data["batches"]
        sym = self.x2 is None
        dev = self.opt.device
        rows = torch.cat([store.get(f"s1-b{i}", ["S"])[0]["S"].to(dev) for i in range(a, b)])
        start = a if sym else 0
        col_units = [f"s1-b{i}" for i in range(start, len(self.b1))] if sym else \
            [f"s2-b{i}" for i in range(len(self.b2))]
        cols = torch.cat([store.get(u, ["S"])[0]["S"].to(dev) for u in col_units])
        acc = dev if self.opt.accumulate == "device" else torch.device("cpu")
        # in float64, a column chunk at a time: S S^T then has rank <= k to float64 rounding, so a spectrum sees
        # zeros beyond k (a float32 product leaves ~1e-7 noise there: beta 1.31 for 0.62 at N = 1,500, k = 300)
        r64 = rows.double()
        k = torch.empty(rows.shape[0], cols.shape[0], dtype=torch.float64, device=dev)
        step = max(1, (64 << 20) // (8 * cols.shape[1]))
        for j in range(0, cols.shape[0], step):
            k[:, j:j + step] = r64 @ cols[j:j + step].double().T
        k = k.to(acc)
        row0 = sum(len(x) for x in self.b1[:a]) * self.c
        col0 = sum(len(x) for x in self.b1[:a]) * self.c if sym else 0
        return Block(row0, col0, k)

    def _project(self, f: dict[str, torch.Tensor], alias: dict[str, str]) -> torch.Tensor:
        get: Callable[[str], torch.Tensor | None] = lambda n: f.get(alias.get(n, n))  # noqa: E731
        parts: list[torch.Tensor | None] = []
        rows = None
        for i, (w, k_l) in enumerate(self.dims.items()):
            e = next((x for x in self.entries if x.name == w), None)
            scale = 1.0 / math.sqrt(k_l)
            if e is None or e.kind in ("layernorm", "elementwise"):
                g = get(w + ".G")
                s = None if g is None else _mm(g.reshape(g.shape[0], -1), self._dense(i, g.shape[-1], k_l, g))
            elif e.kind == "embedding":
                d, tok = get(w + ".D"), get(w + ".ids")
                s = None if d is None or tok is None else self._embedding(i, e, tok, d, k_l)
            else:
                s = self._linear(i, e, get(w + ".A"), get(w + ".D"), get(w + ".Gb"), k_l)
            if s is None:  # layer not reached: its coordinates are zero
                parts.append(None)
                continue
            rows = s.shape[0]
            parts.append(s * scale)
        if rows is None:
            raise KernelError("sketch: no selected parameter was reached by the forward pass")
        like = next(p for p in parts if p is not None)
        out = [p if p is not None else like.new_zeros(rows, k_l) for p, k_l in zip(parts, self.dims.values())]
        s = torch.cat(out, 1)
        if not torch.isfinite(s).all():
            raise KernelError("the sketch contains NaN or inf (the model produced non-finite values)")
        return s

    def _dense(self, i: int, p: int, k_l: int, like: torch.Tensor) -> torch.Tensor:
        return _gauss((p, k_l), _seed(self.opt.seed, i, "dense"), like.dtype).to(like.device)

    def _linear(self, i: int, e: Entry, a: Any, d: Any, gb: Any, k_l: int) -> torch.Tensor | None:
        if d is None and gb is None:
            return None
        if e.weight and e.bias:  # one Kronecker block for [W b] = D^T [A 1]
            a = torch.cat([a, torch.ones(*a.shape[:-1], 1, dtype=a.dtype, device=a.device)], -1)
        elif not e.weight:
            return _mm(gb, self._dense(i, gb.shape[-1], k_l, gb))
        u = _gauss((d.shape[-1], k_l), _seed(self.opt.seed, i, "out"), d.dtype).to(d.device)
        v = _gauss((a.shape[-1], k_l), _seed(self.opt.seed, i, "in"), a.dtype).to(a.device)
        av = _mm(a, v)
        if av.shape[0] != d.shape[0]:
            av = av.repeat_interleave(d.shape[0] // av.shape[0], 0)
        return (_mm(d, u) * av).sum(1)

    def _embedding(self, i: int, e: Entry, ids: torch.Tensor, d: torch.Tensor, k_l: int) -> torch.Tensor:
        v = _gauss((d.shape[-1], k_l), _seed(self.opt.seed, i, "emb"), d.dtype).to(d.device)
        uniq, inv = torch.unique(ids, return_inverse=True)
        rows = torch.stack([self._token_row(e.name, i, int(t), k_l, d.dtype) for t in uniq.tolist()]).to(d.device)
        tok = rows[inv]  # (B, T, k_l)
        if tok.shape[0] != d.shape[0]:
            tok = tok.repeat_interleave(d.shape[0] // tok.shape[0], 0)
        return (_mm(d, v) * tok).sum(1)

    def _token_row(self, name: str, i: int, token: int, k_l: int, dtype: torch.dtype) -> torch.Tensor:
        key = (name, token)
        if key not in self._token_rows:
            self._token_rows[key] = _gauss((k_l,), _seed(self.opt.seed, i, "tok", token), dtype)
        return self._token_rows[key]


def _mm(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x @ m over x's last dimension (through the CPU GEMM library `gemm` chose)."""
    return gemm.mm_t(x.reshape(-1, x.shape[-1]), m.T).reshape(*x.shape[:-1], m.shape[-1])
