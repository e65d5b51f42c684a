"""Typed results: pydantic models that are written as JSON and read back with validation.

A stage or sweep returns one of these; reports and figures read its attributes, never string keys, so a
renamed or missing field fails where the file is read, in one line naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import DataError

R = TypeVar("R", bound="ResultModel")


class ResultModel(BaseModel):
    """Base of every typed result: unknown fields are refused (a renamed field is an error, not a silent
    default); NaN and inf are kept (a correlation of a constant curve is NaN)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False, protected_namespaces=())

    def to_dict(self) -> dict[str, Any]:
        """Plain Python data (floats kept as floats, NaN included) for JSON."""
        return self.model_dump()

    @classmethod
    def from_dict(cls: type[R], data: Any, source: str = "result") -> R:
        """Validate `data`; a mismatch is one DataError line naming `source` and the first bad field."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"]) or "(top)"
            raise DataError(f"{source}: {cls.__name__} field '{where}': {err['msg']} "
                            f"({e.error_count()} error(s))") from None

    @classmethod
    def read(cls: type[R], path: str | Path) -> R:
        """Read and validate a JSON file written from `to_dict()`."""
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{p}: cannot read {cls.__name__} ({e})") from None
        return cls.from_dict(data, str(p))
