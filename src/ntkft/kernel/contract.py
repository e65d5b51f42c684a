"""The model contract the kernel reads, and a guard that leaves the model exactly as it found it.

Any `nn.Module` with `forward(input_ids, attention_mask) -> (B,) or (B, C)`, a linear `head` whose
parameters are named `head.*`, and `out_dim = C` is a kernel model (`Readout` and `Linearized` are)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol, TypeVar, cast

import torch
from torch import nn

from ..errors import KernelError

HEAD_PREFIX = "head."
M = TypeVar("M")


class KernelModel(Protocol):
    """What the eNTK needs of a model: f(ids, mask), a `head` module named `head.*`, and `out_dim` outputs.

    For type checkers only: `check_model` is the runtime check (from Python 3.12 an isinstance check against a
    Protocol looks attributes up statically and misses the submodules nn.Module keeps in `_modules`)."""

    head: nn.Module
    out_dim: int
    training: bool

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Parameter]]: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def modules(self) -> Iterator[nn.Module]: ...

    def named_modules(self, memo: Any = None, prefix: str = "", remove_duplicate: bool = True) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


def check_model(model: M) -> M:
    """`model` itself if it meets the contract; a one-line KernelError naming what is missing otherwise."""
    if not isinstance(model, nn.Module):
        raise KernelError(f"model must be a torch nn.Module with a `head` and `out_dim`, got {type(model).__name__}")
    if not isinstance(getattr(model, "head", None), nn.Module):
        raise KernelError(f"model {type(model).__name__} has no `head` module (the readout the kernel differentiates)")
    c = getattr(model, "out_dim", None)
    if not isinstance(c, int) or c < 1:
        raise KernelError(f"model {type(model).__name__}: out_dim must be an int >= 1, got {c!r}")
    return model


def as_kernel_model(model: Any) -> KernelModel:
    """`model` checked against the contract, typed as a KernelModel."""
    return cast(KernelModel, check_model(model))


def out_dim(model: KernelModel) -> int:
    """C, the number of outputs of f."""
    return int(model.out_dim)


def model_device(model: KernelModel) -> torch.device:
    """The device the model's parameters live on."""
    return next(model.parameters()).device


@contextlib.contextmanager
def differentiating(model: KernelModel | nn.Module, params: dict[str, nn.Parameter]) -> Iterator[None]:
    """Eval mode and requires_grad on exactly `params`; every module's mode and every flag restored on exit,
    exceptions included (a trainer's frozen parameters and dropout settings survive a kernel call)."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)
