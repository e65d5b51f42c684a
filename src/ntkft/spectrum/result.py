"""The base of every spectrum/stopping result: a dataclass that serialises to JSON-ready dicts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any


class Result:
    """Mixin for result dataclasses: `to_dict()` for JSON; `r["field"]` still works for code written against the
    dicts these functions used to return (prefer attribute access)."""

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON-ready values (nested results become dicts)."""
        out: dict[str, Any] = asdict(self)  # type: ignore[call-overload]
        return out

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:  # type: ignore[attr-defined]
            raise KeyError(key)
        return getattr(self, key)
