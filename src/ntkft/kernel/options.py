"""`KernelOptions`: every setting of one eNTK computation besides the model and its inputs, validated once.

One frozen object travels from the CLI (`ntkft kernel`'s flags are generated from `pipeline.KernelConfig`, which
extends it) through `pipeline.run_kernel` and `kernel_matrix` to the plan's `Options`. Errors are one-line
ConfigErrors whose `param` is the field (the CLI shows it as the flag)."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import config_error, param_error
from .params import ParamGroup, parse_group
from .plan import Options, default_max_memory
from .registry import Method, parse_method


def parse_device(device: str | torch.device) -> torch.device:
    """A torch.device from a name; unknown names and CUDA without CUDA are ConfigErrors naming `device`."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise param_error("device", f"unknown device '{device}' (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise param_error("device", f"'{device}' requested but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _bytes(value: Any, allow_zero: bool) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 \
            or (value == 0 and not allow_zero):
        raise ValueError(f"must be a finite number {'>= 0' if allow_zero else '> 0'} (bytes), got {value!r}")
    return int(value)


def _count(value: Any) -> Any:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"must be an integer >= 1, got {value!r}")
    return value


class KernelOptions(BaseModel):
    """How K is computed (which parameters, method, budgets, device) -- not of which model or inputs.

    Only `params`, `method`, `sketch_dim`, `seed` and `accumulate` can change K; budgets, batch size and device
    shape the plan only. Build one with `KernelOptions.of(...)` for ConfigErrors instead of pydantic's."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    params: ParamGroup = Field(ParamGroup.ALL, description="parameters differentiated: all | backbone | head | "
                                                           "no-embeddings")
    method: Method = Field(Method.AUTO, description="auto | factored | jacobian | jvp | sketch")
    max_memory: int | None = Field(None, description="bytes for factors, tiles and K (default: a quarter of the "
                                                     "available memory; on a GPU 80% of its free memory)")
    max_disk: int | None = Field(None, description="bytes of spilled factors (default: no limit)")
    batch_size: int | None = Field(None, description="samples per forward/backward (default: from the budget)")
    device: str | None = Field(None, description="cpu | cuda | cuda:N (default: the model's; `ntkft kernel`: cpu, "
                                                 "under torchrun cuda:LOCAL_RANK when there is CUDA)")
    accumulate: Literal["host", "device"] = Field("host", description="where float64 K is summed")
    sketch_dim: int | None = Field(None, description="projection dimension k of --method sketch")
    seed: int = Field(0, description="seed of the sketch (in `ntkft kernel` also of the subsample and readout head)")
    progress: bool = Field(True, description="show a progress bar")

    @classmethod
    def of(cls, options: KernelOptions | None = None, **fields: Any) -> KernelOptions:
        """`options` (default: the defaults) with `fields` replaced, validated; a ConfigError naming the field."""
        base = options.model_dump(exclude_unset=True) if options is not None else {}
        try:
            return cls(**{**base, **fields})
        except ValidationError as e:
            raise config_error(e) from None

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, v: Any) -> ParamGroup:
        return parse_group(v)

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, v: Any) -> Method:
        return parse_method(v)

    @field_validator("max_memory", mode="before")
    @classmethod
    def _memory(cls, v: Any) -> int | None:
        return _bytes(v, allow_zero=False)

    @field_validator("max_disk", mode="before")
    @classmethod
    def _disk(cls, v: Any) -> int | None:
        return _bytes(v, allow_zero=True)

    @field_validator("batch_size", "sketch_dim", mode="before")
    @classmethod
    def _counts(cls, v: Any) -> Any:
        return _count(v)

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, v: Any) -> str | None:
        if v is None:
            return None
        parse_device(v)  # refused here if unknown or without CUDA; "cuda" picks its index where it is used
        return str(v)

    @model_validator(mode="after")
    def _sketch(self) -> KernelOptions:
        if self.method == Method.SKETCH and self.sketch_dim is None:
            raise ValueError("sketch_dim: method sketch needs an integer sketch_dim >= 1, got None")
        if self.method != Method.SKETCH and self.sketch_dim is not None:
            raise ValueError(f"sketch_dim: applies to method sketch only, not {self.method.value}")
        return self

    def torch_device(self) -> torch.device | None:
        """The device asked for (None: the model's)."""
        return parse_device(self.device) if self.device is not None else None

    def plan_options(self, device: torch.device, max_memory: int | None = None) -> Options:
        """The plan's Options on `device`; the memory budget is ours, else `max_memory`, else the device's default."""
        mem = self.max_memory if self.max_memory is not None else max_memory
        return Options(max_memory=mem if mem is not None else default_max_memory(device), max_disk=self.max_disk,
                       batch_size=self.batch_size, device=device, accumulate=self.accumulate,
                       sketch_dim=self.sketch_dim, seed=self.seed, progress=self.progress)


__all__ = ["KernelOptions", "parse_device"]
