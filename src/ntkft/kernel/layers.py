"""Layer factors: one forward and one backward pass on a batch give every per-sample gradient in factored form.

For a linear map y = x W^T (+ b) the per-sample weight gradient is D_i^T A_i, with A_i the layer's inputs
and D_i = df(x_i)/dy_i over the sample's tokens; an embedding's is D_i scattered to its token rows; an
elementwise-affine norm's is a sum over tokens. What each parameter's layer really did is recorded, not
assumed: `F.linear`, `F.embedding` and `F.layer_norm` calls are intercepted by the parameter's identity
(so an embedding called with positions, a module called twice or a subclass with its own forward are
all seen as they are), conv1d and elementwise norms are captured by forward hooks, and every kind of
layer is checked once against autograd on real samples (`verify`). Anything that does not fit goes to
the generic fallback: one autograd call per sample."""

from __future__ import annotations

import functools
import logging
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from ..errors import KernelError
from . import gemm
from .contract import KernelModel

log = logging.getLogger(__name__)

FALLBACK = "__fallback__"


@dataclass
class Entry:
    """A module whose directly-owned selected parameters (weight and/or bias) are handled in factored form."""

    name: str
    module: nn.Module
    kind: str  # linear | conv1d | embedding | layernorm | elementwise
    weight: bool
    bias: bool

    @property
    def via_function(self) -> bool:
        return self.kind in ("linear", "embedding", "layernorm")

    def params(self) -> dict[str, nn.Parameter]:
        out = {}
        if self.weight:
            out[self.name + ".weight"] = param(self.module, "weight")
        if self.bias:
            out[self.name + ".bias"] = param(self.module, "bias")
        return out

    def numel(self) -> int:
        return sum(p.numel() for p in self.params().values())


def param(mod: nn.Module, name: str) -> nn.Parameter:
    """A module's directly-owned parameter `name` (typed)."""
    p = getattr(mod, name)
    assert isinstance(p, nn.Parameter), f"{type(mod).__name__}.{name} is not a parameter"
    return p


def _kind(mod: nn.Module, direct: dict[str, nn.Parameter]) -> str | None:
    if isinstance(mod, nn.Linear):
        return "linear"
    if type(mod).__name__ == "Conv1D" and hasattr(mod, "nf") and param(mod, "weight").dim() == 2:
        return "conv1d"
    if isinstance(mod, nn.Embedding):
        if mod.max_norm is not None or mod.scale_grad_by_freq or mod.sparse:
            return None
        return "embedding"
    if isinstance(mod, nn.LayerNorm):
        return "layernorm" if mod.elementwise_affine else None
    if all(p.dim() == 1 for p in direct.values()):
        return "elementwise"  # RMSNorm and friends: checked numerically before use
    return None


def find_entries(model: KernelModel, params: dict[str, nn.Parameter]) -> tuple[list[Entry], dict[str, nn.Parameter]]:
    """Split the selected parameters into factored entries (module order) and the generic fallback."""
    selected = {id(p) for p in params.values()}
    owners: dict[int, int] = defaultdict(int)
    for mod in model.modules():
        for p in mod.parameters(recurse=False):
            owners[id(p)] += 1
    entries: list[Entry] = []
    covered: set[int] = set()
    for name, mod in model.named_modules():
        direct = {n: p for n, p in mod.named_parameters(recurse=False) if id(p) in selected}
        if not direct or set(direct) - {"weight", "bias"}:
            continue
        if any(owners[id(p)] > 1 for p in direct.values()):  # tied: the generic path sums every use
            continue
        kind = _kind(mod, direct)
        if kind is None or (kind == "elementwise" and not hasattr(mod, "weight") and "bias" not in direct):
            continue
        entries.append(Entry(name, mod, kind, "weight" in direct, "bias" in direct))
        covered.update(id(p) for p in direct.values())
    fallback = {n: p for n, p in params.items() if id(p) not in covered}
    return entries, fallback


class Unsupported(Exception):
    """An entry's recorded use does not fit its factored form (it moves to the fallback)."""

    def __init__(self, names: set[str], why: str) -> None:
        super().__init__(why)
        self.names, self.why = names, why


_METADATA = {"__get__", "size", "dim", "numel", "element_size", "is_floating_point", "is_complex", "stride",
             "data_ptr", "is_contiguous", "get_device", "__len__", "nelement", "ndimension", "type"}
_FUNCS = {F.linear: ("linear", 1), F.embedding: ("embedding", 1), F.layer_norm: ("layernorm", 2)}


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str) -> Any:
    return args[i] if len(args) > i else kwargs.get(name)


class _Recorder(TorchFunctionMode):
    """Records (call args, output) of F.linear / F.embedding / F.layer_norm per entry weight, and any other
    torch function that touches such a weight (which makes the entry unsupported). With `native` given, F.linear
    runs through `gemm.linear_grad_input` unless its weight or bias may need a gradient: a parameter in `native`
    or a computed (non-leaf) tensor."""

    def __init__(self, entries: list[Entry], native: set[int] | None = None) -> None:
        super().__init__()
        self.by_weight = {id(e.module.weight): e for e in entries if e.via_function}
        self.native = native
        self.calls: dict[str, list[_Call]] = defaultdict(list)
        self.misuse: set[str] = set()

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = self._fast_linear(args, kwargs) if func is F.linear and self.native is not None else None
        if out is None:
            out = func(*args, **kwargs)
        spec = _FUNCS.get(func)
        if spec is not None:
            e = self.by_weight.get(id(_arg(args, kwargs, spec[1], "weight")))
            if e is not None and e.kind == spec[0]:
                self.calls[e.name].append(_Call.of(args, kwargs, out))
                return out
        if getattr(func, "__name__", "") in _METADATA:
            return out
        for a in list(args) + list(kwargs.values()):
            for t in (a if isinstance(a, (list, tuple)) else (a,)):
                if isinstance(t, torch.Tensor) and id(t) in self.by_weight:
                    self.misuse.add(self.by_weight[id(t)].name)
        return out

    def _fast_linear(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        x, w, b = (_arg(args, kwargs, i, n) for i, n in enumerate(("input", "weight", "bias")))
        native = self.native or set()
        for t in (w, b):
            if isinstance(t, torch.Tensor) and t.requires_grad and (not t.is_leaf or id(t) in native):
                return None
        return gemm.linear_grad_input(x, w, b)  # None for anything but plain float32 CPU tensors


@dataclass
class _Call:
    """One recorded call of a layer: its arguments, its output, and the version counters of its tensors then."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    out: torch.Tensor
    versions: list[tuple[torch.Tensor, int]]

    @classmethod
    def of(cls, args: tuple[Any, ...], kwargs: dict[str, Any], out: torch.Tensor) -> _Call:
        ts = [t for t in list(args) + list(kwargs.values()) + [out] if isinstance(t, torch.Tensor)]
        return cls(args, kwargs, out, [(t, t._version) for t in ts])

    def modified(self) -> bool:
        """True when an input or the output was changed in place after the call (its factors would be stale)."""
        return any(t._version != v for t, v in self.versions)


def model_outputs(model: KernelModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """f(x) as (B, C) whatever the readout's shape."""
    f = model(ids, mask)
    return f.reshape(f.shape[0], -1)


class _Layout:
    """How a layer saw the batch: (B, ..., d) batch-first, or flattened to (B*T, d) rows (OPT's MLP does this)."""

    def __init__(self, b: int, t: int, name: str) -> None:
        self.b, self.t, self.name = b, t, name
        self.flat = False

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, tokens, d) for a per-token tensor of either layout."""
        if x.dim() >= 2 and x.shape[0] == self.b:
            return x.reshape(self.b, -1, x.shape[-1])
        if x.dim() == 2 and x.shape[0] == self.b * self.t:
            self.flat = True
            return x.reshape(self.b, self.t, x.shape[-1])
        raise Unsupported({self.name}, f"input of shape {tuple(x.shape)} is neither batch-first nor "
                                       f"(B*T, d) rows (B = {self.b}, T = {self.t})")

    def index(self, x: torch.Tensor) -> torch.Tensor:
        """(B, tokens) for embedding indices of either layout."""
        if x.dim() >= 1 and x.shape[0] == self.b:
            return x.reshape(self.b, -1)
        if x.dim() == 1 and x.shape[0] == self.b * self.t:
            self.flat = True
            return x.reshape(self.b, self.t)
        raise Unsupported({self.name}, f"indices of shape {tuple(x.shape)} are not batch-first")

    def rows(self, ds: list[torch.Tensor | None], like: torch.Tensor) -> torch.Tensor:
        """Per-output gradients of a per-token output -> (B*C, tokens, d), sample-major."""
        per = [self.tokens(torch.zeros_like(like) if d is None else d) for d in ds]
        return per[0] if len(per) == 1 else torch.stack(per, 1).flatten(0, 1)


@dataclass
class Captured:
    """Per-sample factors of one batch. Rows of D and G are sample-major (row = sample * C + output);
    A and ids have one row per sample. `alias` maps a name to an identical stored tensor (q, k, v share A)."""

    feats: dict[str, torch.Tensor]
    alias: dict[str, str]
    outputs: torch.Tensor  # f(x), (B, C)
    flat: set[str]  # entries whose layer saw the batch as (B*T, d) rows
    f: torch.Tensor | None = None  # f(x) with its autograd graph (capture(keep_graph=True) only)


def capture(model: KernelModel, entries: list[Entry], fallback: dict[str, nn.Parameter], ids: torch.Tensor,
            mask: torch.Tensor, keep_graph: bool = False) -> Captured:
    """One forward and one backward per output on a batch: every entry's factors and the fallback's gradients.
    `keep_graph` keeps the autograd graph of f (in `Captured.f`) for one more backward."""
    b = ids.shape[0]
    # the layers' products may skip weight gradients unless a parameter gradient is asked for below
    native = None if keep_graph else {id(p) for p in fallback.values()}
    rec = _Recorder(entries, native)
    hooked: dict[str, list[_Call]] = defaultdict(list)

    def hook(name: str) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], None]:
        def fn(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            hooked[name].append(_Call.of(args, kwargs, out))
        return fn

    handles = [e.module.register_forward_hook(hook(e.name), with_kwargs=True) for e in entries if not e.via_function]
    try:
        if rec.by_weight:
            with rec:
                f = model_outputs(model, ids, mask)
        else:
            f = model_outputs(model, ids, mask)
    finally:
        for h in handles:
            h.remove()
    if not torch.isfinite(f.detach()).all():
        raise KernelError("the model output f(x) contains NaN or inf (the model produced non-finite values)")
    if rec.misuse:
        raise Unsupported(set(rec.misuse), "weight used outside its layer's own call")
    calls = {n: [k for k in cs if isinstance(k.out, torch.Tensor) and k.out.requires_grad]
             for n, cs in {**rec.calls, **hooked}.items()}
    changed = {n for n, cs in calls.items() for k in cs if k.modified()}
    if changed:
        raise Unsupported(changed, "a layer input or output was modified in place after the call")
    c = f.shape[1]
    live = [e for e in entries if calls.get(e.name)]
    outs = [k.out for e in live for k in calls[e.name]]
    fb_names = list(fallback)
    grads_per_c: list[list[torch.Tensor | None]] = []
    fb_rows: list[list[torch.Tensor]] = []
    for k in range(c):
        last = k == c - 1
        g = torch.autograd.grad(f[:, k].sum(), outs, retain_graph=bool(fb_names) or not last or keep_graph,
                                allow_unused=True) if outs else ()
        grads_per_c.append(list(g))
        if fb_names:
            rows = []
            for i in range(b):
                gi = torch.autograd.grad(f[i, k], [fallback[n] for n in fb_names],
                                         retain_graph=not (last and i == b - 1) or keep_graph, allow_unused=True)
                rows.append(torch.cat([(x if x is not None else torch.zeros_like(fallback[n])).reshape(-1)
                                       for x, n in zip(gi, fb_names)]))
            fb_rows.append(rows)
    feats: dict[str, torch.Tensor] = {}
    alias: dict[str, str] = {}
    seen_a: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}  # (data_ptr, shape, stride) of a layer input
    pos = 0
    flat = set()
    for e in live:
        n_calls = len(calls[e.name])
        ds = [[grads_per_c[k][pos + j] for k in range(c)] for j in range(n_calls)]
        lay = _Layout(b, ids.shape[1], e.name)
        _entry_features(e, calls[e.name], ds, lay, c, feats, alias, seen_a)
        if lay.flat:
            flat.add(e.name)
        pos += n_calls
    if fb_names:
        feats[FALLBACK + ".G"] = torch.stack([fb_rows[k][i] for i in range(b) for k in range(c)]).detach()
    return Captured(feats, alias, f.detach(), flat, f if keep_graph else None)


def _entry_features(e: Entry, calls: list[_Call], ds: list[list[torch.Tensor | None]], lay: _Layout, c: int,
                    feats: dict[str, torch.Tensor], alias: dict[str, str],
                    seen_a: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str]) -> None:
    if e.kind in ("linear", "conv1d"):
        a_parts, d_parts = [], []
        for call, dk in zip(calls, ds):
            a_parts.append(lay.tokens(_arg(call.args, call.kwargs, 0, "input").detach()))
            d_parts.append(lay.rows(dk, call.out))
        if e.weight:
            a = a_parts[0] if len(a_parts) == 1 else torch.cat(a_parts, 1)
            key = (a.data_ptr(), tuple(a.shape), a.stride())
            if len(a_parts) == 1 and key in seen_a:
                alias[e.name + ".A"] = seen_a[key]
            else:
                seen_a[key] = e.name + ".A"
                feats[e.name + ".A"] = a
        d = d_parts[0] if len(d_parts) == 1 else torch.cat(d_parts, 1)
        if e.weight:
            feats[e.name + ".D"] = d
        if e.bias:
            feats[e.name + ".Gb"] = d.sum(1)
    elif e.kind == "embedding":
        ids_parts, d_parts = [], []
        for call, dk in zip(calls, ds):
            idx = lay.index(_arg(call.args, call.kwargs, 0, "input"))
            d = lay.rows(dk, call.out)
            pad = _arg(call.args, call.kwargs, 2, "padding_idx")
            if pad is not None:  # the padding row gets no gradient
                pad = pad + param(e.module, "weight").shape[0] if pad < 0 else pad
                d = d * (idx != pad).to(d.dtype).repeat_interleave(c, 0).unsqueeze(-1)
            ids_parts.append(idx)
            d_parts.append(d)
        feats[e.name + ".ids"] = torch.cat(ids_parts, 1) if len(ids_parts) > 1 else ids_parts[0]
        feats[e.name + ".D"] = torch.cat(d_parts, 1) if len(d_parts) > 1 else d_parts[0]
    elif e.kind == "layernorm":
        gs: list[torch.Tensor] = []
        for call, dk in zip(calls, ds):
            args, kwargs = call.args, call.kwargs
            shape = tuple(_arg(args, kwargs, 1, "normalized_shape"))
            if len(shape) != 1:
                raise Unsupported({e.name}, f"layer norm over {len(shape)} dimensions")
            eps = _arg(args, kwargs, 4, "eps")
            x = lay.tokens(_arg(args, kwargs, 0, "input").detach())
            xh = F.layer_norm(x, shape, None, None, 1e-5 if eps is None else eps)
            xh = xh.repeat_interleave(c, 0) if c > 1 else xh
            d = lay.rows(dk, call.out)
            parts = ([(d * xh).sum(1)] if e.weight else []) + ([d.sum(1)] if e.bias else [])
            gs.append(torch.cat(parts, -1))
        feats[e.name + ".G"] = functools.reduce(torch.add, gs)
    else:  # elementwise: rerun the module's own forward with one copy of its parameters per sample
        gs = [_elementwise_grads(e, call, dk, lay, c) for call, dk in zip(calls, ds)]
        feats[e.name + ".G"] = functools.reduce(torch.add, gs)


def _elementwise_grads(e: Entry, call: _Call, dk: list[torch.Tensor | None], lay: _Layout, c: int) -> torch.Tensor:
    """Per-sample gradients of an elementwise-affine module, exactly as its own forward computes them."""
    mod, b = e.module, lay.b
    names = [n for n, on in (("weight", e.weight), ("bias", e.bias)) if on]
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in call.args)
    if not args or not isinstance(args[0], torch.Tensor):
        raise Unsupported({e.name}, "first input is not a tensor")
    x = lay.tokens(args[0])  # (B, T, d): rerun on this shape so per-sample parameters broadcast
    args = (x,) + args[1:]
    with torch.enable_grad():
        per = {n: getattr(mod, n).detach().reshape(1, 1, -1).repeat(b, 1, 1).requires_grad_(True) for n in names}
        try:
            y = functional_call(mod, per, args, call.kwargs)
        except Exception as err:  # noqa: BLE001 - any failure means the per-sample trick does not apply
            raise Unsupported({e.name}, f"module does not broadcast per-sample parameters ({err})") from None
        if y.shape != x.shape[:-1] + y.shape[-1:]:
            raise Unsupported({e.name}, "module output is not per token")
        rows = []
        for k, d in enumerate(dk):
            d = torch.zeros_like(y) if d is None else lay.tokens(d).reshape(y.shape)
            g = torch.autograd.grad(y, [per[n] for n in names], grad_outputs=d, retain_graph=k < len(dk) - 1)
            rows.append(torch.cat([t.reshape(b, -1) for t in g], -1))
    return rows[0] if c == 1 else torch.stack(rows, 1).flatten(0, 1)


# ------------------------------------------------------------------ checks against autograd


def _reconstruct(e: Entry, feats: dict[str, torch.Tensor], alias: dict[str, str], row: int,
                 sample: int, rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Entry's per-sample gradients for one row (sample*C + output) from its factors. An embedding's gradient is
    given on `rows` only (sorted token ids: those the probe used), not as a dense (vocab, d) matrix."""
    def get(n: str) -> torch.Tensor:
        return cast(torch.Tensor, feats.get(alias.get(n, n)))  # present: the entry was captured

    out = {}
    if e.kind in ("linear", "conv1d"):
        d = get(e.name + ".D")
        if e.weight:
            a = get(e.name + ".A")[sample]
            gw = d[row].T @ a
            out[e.name + ".weight"] = gw.T if e.kind == "conv1d" else gw
        if e.bias:
            out[e.name + ".bias"] = get(e.name + ".Gb")[row]
    elif e.kind == "embedding":
        w = param(e.module, "weight")
        ids = get(e.name + ".ids")[sample].reshape(-1)
        at = rows if rows is not None else torch.arange(w.shape[0], device=ids.device)
        g = torch.zeros(len(at), w.shape[1], dtype=w.dtype, device=w.device)
        g.index_add_(0, torch.searchsorted(at, ids), get(e.name + ".D")[row].to(w.dtype))
        out[e.name + ".weight"] = g
    else:
        g = get(e.name + ".G")[row]
        off = 0
        for n, on in (("weight", e.weight), ("bias", e.bias)):
            if on:
                p = getattr(e.module, n)
                out[f"{e.name}.{n}"] = g[off:off + p.numel()].reshape(p.shape)
                off += p.numel()
    return out


def tolerance(dtype: torch.dtype) -> float:
    """Relative gradient mismatch that flags a wrong factored form (rounding stays far below it)."""
    return {torch.float64: 1e-5, torch.float32: 1e-3}.get(dtype, 5e-2)  # float64 models still upcast norms to float32


def verify(model: KernelModel, entries: list[Entry], fallback: dict[str, nn.Parameter], ids: torch.Tensor,
           mask: torch.Tensor) -> tuple[list[Entry], dict[str, nn.Parameter], Captured, list[str]]:
    """Capture on a probe batch (two samples of different length) and compare the factored gradients of one
    module of each class and layout (and of every elementwise module) with autograd; entries that fail move
    to the fallback. One extra backward on the probe's own graph: the gradient of sum_i w_i f(x_i) for random
    w, so samples mixed up inside a layer show as well as a wrong formula.

    Returns the entries, fallback, the probe's capture (for sizing) and the names that moved."""
    moved: list[str] = []
    for _ in range(len(entries) + 1):
        try:
            cap = capture(model, entries, fallback, ids, mask, keep_graph=True)
        except Unsupported as u:
            entries, fallback = _demote(entries, fallback, u.names)
            moved += sorted(u.names)
            log.info("factored: %s use the per-sample fallback (%s)", ", ".join(sorted(u.names)), u.why)
            continue
        bad = _check(entries, cap)
        cap.f = None
        if not bad:
            return entries, fallback, cap, moved
        entries, fallback = _demote(entries, fallback, bad)
        moved += sorted(bad)
        log.warning("factored: %s disagree with autograd; they use the per-sample fallback", ", ".join(sorted(bad)))
    raise KernelError("factored: could not find a consistent set of layer factors for this model; use method jacobian")


def _demote(entries: list[Entry], fallback: dict[str, nn.Parameter],
            names: set[str]) -> tuple[list[Entry], dict[str, nn.Parameter]]:
    fb = dict(fallback)
    for e in entries:
        if e.name in names:
            fb.update(e.params())
    return [e for e in entries if e.name not in names], fb


def _check(entries: list[Entry], cap: Captured) -> set[str]:
    seen: set[tuple[type[nn.Module], bool]] = set()
    chosen = []
    for e in entries:  # one module per class and layout; every elementwise module (they are small)
        sig = (type(e.module), e.name in cap.flat)
        if e.kind == "elementwise" or sig not in seen:
            seen.add(sig)
            chosen.append(e)
    chosen = [e for e in chosen if e.name + ".D" in cap.feats or e.name + ".G" in cap.feats
              or e.name + ".Gb" in cap.feats]
    if not chosen or cap.f is None:
        return set()
    b, c = cap.outputs.shape
    w = torch.randn(b, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(cap.f)
    params = {n: p for e in chosen for n, p in e.params().items()}
    grads = torch.autograd.grad((w * cap.f[:, 0]).sum(), list(params.values()), allow_unused=True)
    ref = {n: (g if g is not None else torch.zeros_like(p)) for (n, p), g in zip(params.items(), grads)}
    bad: set[str] = set()
    # gradients that vanish in exact arithmetic (a key bias under softmax) are rounding noise on both sides
    floor = 1e-3 * math.sqrt(sum(float(r.norm()) ** 2 for r in ref.values()))
    for e in chosen:
        tol = tolerance(next(iter(e.params().values())).dtype)
        # an embedding is compared on the rows the probe's tokens used; autograd's gradient anywhere else is an error
        rows = torch.unique(cap.feats[e.name + ".ids"]) if e.kind == "embedding" else None
        rec: dict[str, torch.Tensor] = {}
        for i in range(b):
            for n, g in _reconstruct(e, cap.feats, cap.alias, i * c, i, rows).items():
                rec[n] = rec.get(n, 0) + w[i] * g.to(ref[n].dtype)
        for n, g in rec.items():
            r = ref[n]
            outside = 0.0
            if rows is not None:
                outside = float(r.index_fill(0, rows, 0).norm())
                r = r[rows]
            scale = max(float(r.norm()), float(g.norm()), floor)
            if scale > 0 and math.hypot(float((g - r).norm()), outside) > tol * scale:
                bad.add(e.name)
    return bad
