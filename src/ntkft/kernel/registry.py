"""Kernel methods: an enum, one protocol every method implements, and the registry between them.

Adding a method = one module with a class implementing `KernelMethod` + one enum member + one line
in `_REGISTRY`. `kernel_matrix` only talks to the protocol."""

from __future__ import annotations

import importlib
from enum import Enum
from typing import Protocol

from torch import nn

from ..errors import ConfigError
from .checkpoint import Store
from .contract import KernelModel, as_kernel_model
from .plan import Artifact, Block, Inputs, Options, Plan, Unit


class Method(str, Enum):
    """How K is computed: `auto` picks factored when it covers the parameters, else jacobian."""

    AUTO = "auto"
    JACOBIAN = "jacobian"  # per-sample Jacobians (torch.func.jacrev), the reference
    JVP = "jvp"  # NTK-vector products, forward over reverse (the paper's A.2)
    FACTORED = "factored"  # per-layer factors, exact; layer groups and disk for large N
    SKETCH = "sketch"  # unbiased random projections of per-sample gradients from the layer factors


_REGISTRY: dict[Method, str] = {
    Method.JACOBIAN: "jacobian:JacobianMethod",
    Method.JVP: "jvp:JvpMethod",
    Method.FACTORED: "factored:FactoredMethod",
    Method.SKETCH: "sketch:SketchMethod",
}


class KernelMethod(Protocol):
    """One eNTK method: it plans work units for given inputs, computes any unit, and nothing else.

    `compute_unit` returns an `Artifact` for a pass's produce units and a `Block` for its contribution
    units; it may read the artifacts of its own pass from `store`. Plans are deterministic, so every
    rank of a distributed run (or a resumed run) builds the same one."""

    exact: bool  # False for estimators (sketch)

    def __init__(self, model: KernelModel, params: dict[str, nn.Parameter], options: Options) -> None: ...

    def plan(self, x1: Inputs, x2: Inputs | None) -> Plan: ...

    def compute_unit(self, unit: Unit, store: Store) -> Artifact | Block: ...


def parse_method(method: Method | str) -> Method:
    """`method` as a Method; a ConfigError naming the choices otherwise."""
    try:
        return Method(method)
    except ValueError:
        raise ConfigError(f"method: unknown method '{method}': use one of {', '.join(m.value for m in Method)}",
                          param="method") from None


def implementation(method: Method) -> type[KernelMethod]:
    """The class registered for `method` (not AUTO)."""
    module, cls = _REGISTRY[method].split(":")
    impl: type[KernelMethod] = getattr(importlib.import_module(f"{__package__}.{module}"), cls)
    return impl


def resolve_method(method: Method | str, model: KernelModel | nn.Module, params: dict[str, nn.Parameter]) -> Method:
    """AUTO -> factored when at most 5% of the parameters need its per-sample fallback, else jacobian."""
    m = parse_method(method)
    if m != Method.AUTO:
        return m
    from .layers import find_entries

    n_all = sum(p.numel() for p in params.values())
    _, fallback = find_entries(as_kernel_model(model), params)
    return Method.FACTORED if sum(p.numel() for p in fallback.values()) <= 0.05 * n_all else Method.JACOBIAN
