"""Validation of every pydantic config in one place: YAML or keyword input, one-line errors naming the field."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError, config_error

C = TypeVar("C", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for ntkft configs: unknown keys are errors, NaN/inf are refused, assignments re-validated."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)


def make(cls: type[C], **kw: Any) -> C:
    """Validate keyword arguments into `cls`."""
    try:
        return cls(**kw)
    except ValidationError as e:
        raise config_error(e) from None


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """`cls` from a YAML/JSON file (if given) updated with `overrides`; one-line errors."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: must hold a mapping of {cls.__name__} fields, not a {type(loaded).__name__}")
        raw = loaded or {}
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return cls(**raw)
    except ValidationError as e:
        raise config_error(e, str(path) if path else "") from None


def finite_positive(name: str, value: float | None, allow_none: bool = True) -> float | None:
    """Check a float argument of a library function (for functions that take no config object)."""
    if value is None and allow_none:
        return None
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}: must be a finite number > 0, got {value!r}", param=name)
    return float(value)
