"""Validation of every pydantic config in one place: YAML or keyword input, one-line errors naming the field."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError

C = TypeVar("C", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for ntkft configs: unknown keys are errors, NaN/inf are refused, assignments re-validated."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)


def config_error(e: ValidationError, where: str = "") -> ConfigError:
    """The first pydantic error as a ConfigError whose message starts with the field name."""
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not loc:  # a check across fields: its message starts with the field it blames
        head, sep, rest = msg.partition(": ")
        loc, msg = (head, rest) if sep and head.isidentifier() else ("config", msg)
    if err.get("type") == "extra_forbidden":
        msg = "unknown field"
    if err["loc"] and "input" in err and err.get("type") != "missing" and not isinstance(err["input"], (dict, list)) \
            and str(err["input"]) not in msg:
        msg += f" (got {err['input']!r})"
    if where:  # a config file: name the file and its key (the value may have come from the file)
        return ConfigError(f"{where}: {loc}: {msg}")
    return ConfigError(f"{loc}: {msg}", param=loc.split(".")[0] if loc != "config" else None)


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
