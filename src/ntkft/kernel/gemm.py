"""Float32 matrix products on the CPU through the faster of the two GEMM libraries torch ships.

torch's CPU matmul calls MKL, whose single-precision GEMM runs its AVX2 code on non-Intel CPUs (107 GFLOP/s per
core on an AMD EPYC with AVX-512), while oneDNN, also inside torch, runs AVX-512 there (216-250 per core). The
kernel's products (the model's linear layers during capture, the Gram and the pair forms) go through
`backend()`: NTKFT_GEMM = torch | onednn | auto (default: a ~1 GFLOP timing of both once per process; oneDNN is
kept when it is >= 1.25x faster and agrees with float64 to float32 rounding). Other dtypes and devices use torch.
The factored kernel keeps torch's for tiny kernels (< 1e9 GEMM flops, where the ~30 ms timing costs more than it
can save) unless NTKFT_GEMM names the backend."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..errors import ConfigError

CHOICES = ("auto", "torch", "onednn")
ENV = "NTKFT_GEMM"
SPEEDUP = 1.25  # oneDNN must beat torch's matmul by this much to be chosen (keeps the choice stable run to run)

_chosen: str | None = None
_forced = False  # chosen by NTKFT_GEMM or `using`, not timed


def _op() -> Any:
    """oneDNN's dense linear (x @ w.T + b) as torch exposes it, or None."""
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return None
    return getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


def _onednn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    if x.stride(-1) != 1 and (x.dim() != 2 or x.stride(0) != 1):
        x = x.contiguous()
    if not (w.is_contiguous() or w.t().is_contiguous()):
        w = w.contiguous()  # a weight with gaps between its rows is reordered ~1000x slower than copied
    return _op()(x, w, b, "none", [], "")  # type: ignore[no-any-return]


def _calibrate() -> str:
    """'onednn' when it is available, exact to float32 rounding and >= SPEEDUP x faster here, else 'torch'."""
    if _op() is None:
        return "torch"
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, 256, generator=g), torch.randn(48, 256, generator=g)
    ref = x.double() @ w.double().T
    try:
        err = float((_onednn(x, w).double() - ref).norm() / ref.norm())
    except RuntimeError:
        return "torch"
    if not err < 1e-5:
        return "torch"
    a, m = torch.randn(256, 1024, generator=g), torch.randn(512, 1024, generator=g)  # 0.27 GFLOP, ~30 ms in all
    best = {"torch": float("inf"), "onednn": float("inf")}
    runs: dict[str, Callable[[], torch.Tensor]] = {"torch": lambda: a @ m.T, "onednn": lambda: _onednn(a, m)}
    for fn in runs.values():
        fn()  # warm up (thread pools, primitive caches)
    for _ in range(3):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return "onednn" if best["torch"] >= SPEEDUP * best["onednn"] else "torch"


def backend() -> str:
    """'torch' or 'onednn': what float32 CPU products use in this process (NTKFT_GEMM, else timed once)."""
    global _chosen, _forced
    if _chosen is None:
        want = _wanted()
        _chosen, _forced = (_calibrate(), False) if want == "auto" else (want, True)
    return _chosen


def _wanted() -> str:
    want = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if want not in CHOICES:
        raise ConfigError(f"{ENV}: must be one of {', '.join(CHOICES)}, got {want!r}")
    if want == "onednn" and _op() is None:
        raise ConfigError(f"{ENV}: onednn requested but this torch build has no oneDNN linear")
    return want


def check_env() -> None:
    """Raise ConfigError (one line naming NTKFT_GEMM) for a value this process cannot use; the CLI calls it before
    any command writes, the kernel again where the library is chosen."""
    _wanted()


def forced() -> bool:
    """True when the backend was named (NTKFT_GEMM or `using`) rather than timed: callers then keep it even for
    work too small to gain from it."""
    if _chosen is None:
        return _wanted() != "auto"
    return _forced


@contextmanager
def using(name: str) -> Iterator[None]:
    """Use GEMM backend `name` ('torch' or 'onednn') inside the block (tests and benchmarks)."""
    global _chosen, _forced
    if name not in ("torch", "onednn") or (name == "onednn" and _op() is None):
        raise ConfigError(f"gemm: cannot use {name!r} here")
    before = _chosen, _forced
    _chosen, _forced = name, True
    try:
        yield
    finally:
        _chosen, _forced = before


def fast(*ts: torch.Tensor) -> bool:
    """True when these tensors' products go through oneDNN (float32, CPU, oneDNN chosen)."""
    return all(t.dtype == torch.float32 and t.device.type == "cpu" for t in ts) and backend() == "onednn"


def mm_t(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T for 2-d x and w (a new tensor)."""
    return _onednn(x, w) if fast(x, w) else x @ w.T


class _GradInputLinear(torch.autograd.Function):
    """y = x @ w.T + b by oneDNN whose backward gives x's gradient only (w and b get none)."""

    @staticmethod
    def forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return _onednn(x, w.detach(), None if b is None else b.detach())

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (w,) = ctx.saved_tensors
        gx = _onednn(gy, w.detach().t()) if ctx.needs_input_grad[0] else None
        return gx, None, None


def linear_grad_input(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor | None:
    """F.linear through oneDNN for a caller that never asks for w's or b's gradient (the layer capture, which
    differentiates with respect to layer outputs), or None when torch's own path applies (other dtypes, devices,
    shapes, and tensor subclasses, whose own F.linear may differ)."""
    ts = [x, w] + ([] if b is None else [b])
    if any(type(t) not in (torch.Tensor, torch.nn.Parameter) for t in ts) or not fast(*ts):
        return None
    if x.dim() < 2 or w.dim() != 2 or (b is not None and b.dim() != 1) or x.numel() == 0:
        return None
    out: torch.Tensor = _GradInputLinear.apply(x, w, b)  # type: ignore[no-untyped-call]
    return out
