"""`kernel_matrix`: the one entry point for the eNTK, and the paper's normalisations."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..errors import ConfigError
from .contract import HEAD_PREFIX, KernelModel, check_model, differentiating, model_device
from .engine import assemble, execute, frozen_gc, open_stores, plan_units, weights_digest
from .params import ParamGroup, select_params
from .plan import Inputs, Options, Plan, default_max_memory
from .registry import Method, parse_method, resolve_method

log = logging.getLogger(__name__)

__all__ = ["Method", "kernel_matrix", "normalise", "parse_device", "resolve_method", "trace_outputs", "width_normalise"]


def _bad(param: str, msg: str) -> ConfigError:
    err = ConfigError(f"{param}: {msg}")
    err.param = param
    return err


def _bytes(name: str, value: float | int | None, allow_zero: bool = False) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 \
            or (value == 0 and not allow_zero):
        raise _bad(name, f"must be a finite number {'>= 0' if allow_zero else '> 0'} (bytes), got {value!r}")
    return int(value)


def parse_device(device: str | torch.device) -> torch.device:
    """A torch.device from a name; unknown names and CUDA without CUDA are ConfigErrors naming `device`."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise _bad("device", f"unknown device '{device}' (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise _bad("device", f"'{device}' requested but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def resolve_device(device: str | torch.device | None, model: KernelModel) -> torch.device:
    """The device to compute on: the model's unless given, and then it must be the model's."""
    if device is None:
        return model_device(model)
    dev = parse_device(device)
    if model_device(model) != dev:
        raise _bad("device", f"the model is on {model_device(model)}, not {dev}: move it there first "
                             "(model.to(device))")
    return dev


def checked_args(model: Any, x1: dict[str, torch.Tensor], x2: dict[str, torch.Tensor] | None,
                 params: ParamGroup | str, method: Method | str,
                 max_memory: float | None, max_disk: float | None, batch_size: int | None,
                 device: str | torch.device | None, accumulate: str, sketch_dim: int | None,
                 ) -> tuple[KernelModel, Inputs, Inputs | None, dict[str, nn.Parameter], Method, int | None, int | None,
                            torch.device]:
    """Every argument of a kernel computation validated once (one-line errors naming the parameter):
    (model, inputs 1, inputs 2 or None, selected parameters, method, memory bytes, disk bytes, device)."""
    model = check_model(model)
    in1 = Inputs.of(x1, "x1")
    in2 = Inputs.of(x2, "x2") if x2 is not None else None
    sel = select_params(model, params)
    meth = resolve_method(parse_method(method), model, sel)
    mem = _bytes("max_memory", max_memory)
    disk = _bytes("max_disk", max_disk, allow_zero=True)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise _bad("batch_size", f"must be an integer >= 1, got {batch_size!r}")
    if accumulate not in ("host", "device"):
        raise _bad("accumulate", f"must be 'host' or 'device', got {accumulate!r}")
    if meth == Method.SKETCH:
        if sketch_dim is None or isinstance(sketch_dim, bool) or not isinstance(sketch_dim, int) or sketch_dim < 1:
            raise _bad("sketch_dim", f"method sketch needs an integer sketch_dim >= 1, got {sketch_dim!r}")
    elif sketch_dim is not None:
        raise _bad("sketch_dim", f"applies to method sketch only, not {meth.value}")
    return model, in1, in2, sel, meth, mem, disk, resolve_device(device, model)


def work_key(model: KernelModel, in1: Inputs, in2: Inputs | None, sel: dict[str, nn.Parameter], meth: Method,
             plan: Plan, opts: Options) -> dict[str, Any]:
    """What a checkpoint of finished units is tied to: method, parameters, inputs, weights, plan, options and the
    GEMM library the plan computes with (float32 rounding differs between them; `plan.info["gemm"]`)."""
    return {"method": meth.value, "params": sorted(sel), "x1": in1.digest(),
            "x2": in2.digest() if in2 is not None else None, "weights": weights_digest(cast(nn.Module, model)),
            "head_prefix": HEAD_PREFIX, "plan": plan.digest(), "options": opts.to_key(),
            "gemm": plan.info.get("gemm", "torch")}


def kernel_matrix(model: Any, x1: dict[str, torch.Tensor], x2: dict[str, torch.Tensor] | None = None,
                  params: ParamGroup | str = "all",
                  method: Method | str = Method.AUTO, max_memory: float | None = None,
                  batch_size: int | None = None, checkpoint_dir: str | Path | None = None,
                  progress: bool = True, *, max_disk: float | None = None, device: str | torch.device | None = None,
                  accumulate: str = "host", sketch_dim: int | None = None, seed: int = 0,
                  info: dict[str, Any] | None = None) -> torch.Tensor:
    """Unnormalised eNTK K_ij = <grad f(x_i), grad f(x_j)> (float64, on the host).

    `model` meets `KernelModel` (e.g. a Readout); with C outputs the result is (N1*C, N2*C), rows ordered
    sample-major. `x2=None` gives the symmetric K(X1, X1), computing each block of the upper triangle once.
    `max_memory` (bytes; default a quarter of the available host memory, or 80% of the free GPU memory) and
    `max_disk` (bytes of scratch files, default no limit) bound the work: factors that do not fit go to disk,
    and layer groups (one forward/backward each) keep both within budget at any N. With `checkpoint_dir`,
    finished units are kept there, a rerun resumes from them, and the files are removed after success (only
    files the kernel wrote). `device` must be the model's; `accumulate` = "host" or "device" says where float64
    K is summed. `sketch_dim`/`seed` belong to method "sketch" (an unbiased estimate, not the exact K). `info`, if
    given, receives the plan's facts (batches, layer groups, spill, the GEMM library used: "gemm")."""
    model, in1, in2, sel, meth, mem, disk, dev = checked_args(model, x1, x2, params, method, max_memory, max_disk,
                                                              batch_size, device, accumulate, sketch_dim)
    opts = Options(max_memory=mem if mem is not None else default_max_memory(dev), max_disk=disk, batch_size=batch_size,
                   device=dev, accumulate=accumulate, sketch_dim=sketch_dim, seed=seed, progress=progress)
    with frozen_gc(), differentiating(model, sel):
        impl, plan = plan_units(model, in1, in2, sel, meth, opts)
        if info is not None:
            info.update(plan.info)
        key = work_key(model, in1, in2, sel, meth, plan, opts) if checkpoint_dir is not None else None
        stores = open_stores(plan, checkpoint_dir, key)
        try:
            acc_dev = dev if accumulate == "device" else torch.device("cpu")
            k = assemble(plan, execute(impl, plan, stores, progress, acc_dev, dev))
        finally:
            stores.close()
        stores.finish()
    return k.detach().cpu()


# ------------------------------------------------------------------ normalisations (docs/theory.md sec. 3)


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
