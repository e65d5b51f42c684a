"""`kernel_matrix`: the one entry point for the eNTK, and the paper's normalisations."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..errors import param_error
from .contract import HEAD_PREFIX, KernelModel, check_model, differentiating, model_device
from .engine import assemble, execute, frozen_gc, open_stores, plan_units, weights_digest
from .options import KernelOptions, parse_device
from .params import select_params
from .plan import Inputs, Options, Plan
from .registry import KernelMethod, Method, resolve_method

log = logging.getLogger(__name__)

__all__ = ["Job", "KernelOptions", "Method", "kernel_matrix", "normalise", "parse_device", "resolve_method",
           "trace_outputs", "width_normalise"]


def resolve_device(device: str | torch.device | None, model: KernelModel) -> torch.device:
    """The device to compute on: the model's unless given, and then it must be the model's."""
    if device is None:
        return model_device(model)
    dev = parse_device(device)
    if model_device(model) != dev:
        raise param_error("device", f"the model is on {model_device(model)}, not {dev}: move it there first "
                                    "(model.to(device))")
    return dev


@dataclass(frozen=True)
class Job:
    """One kernel computation, validated once: model, inputs, the differentiated parameters, the resolved method
    and device, and the options it runs with."""

    model: KernelModel
    x1: Inputs
    x2: Inputs | None
    params: dict[str, nn.Parameter]
    method: Method
    device: torch.device
    options: KernelOptions

    @classmethod
    def of(cls, model: Any, x1: dict[str, torch.Tensor], x2: dict[str, torch.Tensor] | None,
           options: KernelOptions) -> Job:
        """Check the model and inputs (one-line errors naming `x1`, `x2`, `params`, `device`...)."""
        m = check_model(model)
        in1 = Inputs.of(x1, "x1")
        in2 = Inputs.of(x2, "x2") if x2 is not None else None
        sel = select_params(m, options.params)
        return cls(m, in1, in2, sel, resolve_method(options.method, m, sel), resolve_device(options.device, m), options)

    @property
    def accumulate_on(self) -> torch.device:
        """Where float64 K is summed."""
        return self.device if self.options.accumulate == "device" else torch.device("cpu")

    def plan(self, opts: Options) -> tuple[KernelMethod, Plan]:
        """The method's implementation and its plan of work units under `opts`."""
        return plan_units(self.model, self.x1, self.x2, self.params, self.method, opts)

    def key(self, plan: Plan, opts: Options) -> dict[str, Any]:
        """What a checkpoint of finished units is tied to: method, parameters, inputs, weights, plan, options and
        the GEMM library the plan computes with (float32 rounding differs between them; `plan.info["gemm"]`)."""
        return {"method": self.method.value, "params": sorted(self.params), "x1": self.x1.digest(),
                "x2": self.x2.digest() if self.x2 is not None else None,
                "weights": weights_digest(cast(nn.Module, self.model)), "head_prefix": HEAD_PREFIX,
                "plan": plan.digest(), "options": opts.to_key(), "gemm": plan.info.get("gemm", "torch")}


def kernel_matrix(model: Any, x1: dict[str, torch.Tensor], x2: dict[str, torch.Tensor] | None = None,
                  options: KernelOptions | None = None, *, checkpoint_dir: str | Path | None = None,
                  info: dict[str, Any] | None = None, **shortcuts: Any) -> torch.Tensor:
    """Unnormalised eNTK K_ij = <grad f(x_i), grad f(x_j)> (float64, on the host).

    `model` meets `KernelModel` (e.g. a Readout); with C outputs the result is (N1*C, N2*C), rows ordered
    sample-major. `x2=None` gives the symmetric K(X1, X1), computing each block of the upper triangle once.
    How K is computed is `options` (a `KernelOptions`); its fields may also be given as keywords (`params`,
    `method`, `max_memory`, `max_disk`, `batch_size`, `device`, `accumulate`, `sketch_dim`, `seed`, `progress`),
    which replace those of `options`. `max_memory` (bytes; default a quarter of the available host memory, or
    80% of the free GPU memory) and `max_disk` (bytes of scratch files, default no limit) bound the work: factors
    that do not fit go to disk, and layer groups (one forward/backward each) keep both within budget at any N.
    With `checkpoint_dir`, finished units are kept there, a rerun resumes from them, and the files are removed
    after success (only files the kernel wrote). `device` must be the model's; `accumulate` = "host" or "device"
    says where float64 K is summed. `sketch_dim`/`seed` belong to method "sketch" (an unbiased estimate, not the
    exact K). `info`, if given, receives the plan's facts (batches, layer groups, spill, the GEMM library used)."""
    opts = KernelOptions.of(options, **shortcuts)
    job = Job.of(model, x1, x2, opts)
    plan_opts = opts.plan_options(job.device)
    with frozen_gc(), differentiating(job.model, job.params):
        impl, plan = job.plan(plan_opts)
        if info is not None:
            info.update(plan.info)
        stores = open_stores(plan, checkpoint_dir, job.key(plan, plan_opts) if checkpoint_dir is not None else None)
        try:
            k = assemble(plan, execute(impl, plan, stores, opts.progress, job.accumulate_on, job.device))
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
