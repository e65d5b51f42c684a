"""The pieces a stage builds its report section from: cells, tables, sections, and the view of a run's typed
results that sections and later stages read (by result type, never by string key)."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .._results import ResultModel
from .paper import label

R = TypeVar("R", bound=ResultModel)


def fmt(v: Any, digits: int = 3) -> str:
    """One cell: floats to `digits` decimals, None and NaN as '-', inf as 'inf', lists joined by ' > '."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}f}"
    if isinstance(v, list):
        return " > ".join(label(x) if isinstance(x, str) else fmt(x) for x in v)
    return str(v)


@dataclass
class Table:
    """A titled table with the JSON file and entries its numbers come from."""

    id: str
    title: str
    source: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    note: str = ""

    def cells(self) -> list[list[str]]:
        """Every row as formatted cells."""
        return [[fmt(v) for v in r] for r in self.rows]

    def markdown(self) -> str:
        """The table as Markdown, with an anchor and its source."""
        head = f"**{self.title}** <a id=\"{self.id}\"></a>\n\n"
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in self.cells()]
        src = f"\n\n_Source: `{self.source}`._" + (f" {self.note}" if self.note else "")
        return head + "\n".join(lines) + src + "\n"

    def html(self) -> str:
        """The table as HTML, its source in a data attribute and a caption line."""
        h = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.cells())
        note = f" {html.escape(self.note)}" if self.note else ""
        return (f'<h4>{html.escape(self.title)}</h4><table id="{html.escape(self.id)}" '
                f'data-source="{html.escape(self.source)}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'
                f'<p class="src">Source: <code>{html.escape(self.source)}</code>.{note}</p>')


@dataclass
class Section:
    """One part of the report: paragraphs, tables and figures (file name under figures/, caption)."""

    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class RunView:
    """A run's config (config.json as written) and the typed results of its stages, looked up by type."""

    cfg: dict[str, Any] = field(default_factory=dict)
    results: list[ResultModel] = field(default_factory=list)

    def of(self, cls: type[R]) -> R | None:
        """The result of type `cls`, or None when that stage has not run."""
        return next((r for r in self.results if isinstance(r, cls)), None)

    def need(self, cls: type[R]) -> R:
        """The result of type `cls`; the runner runs a stage's needs first, so a missing one is a bug."""
        got = self.of(cls)
        if got is None:
            raise RuntimeError(f"{cls.__name__} is needed but was not run")
        return got

    def plans(self) -> dict[str, dict[str, Any]]:
        """The config's model plans by their id (label or name)."""
        return {m.get("label") or m["name"]: m for m in self.cfg.get("models", [])}
