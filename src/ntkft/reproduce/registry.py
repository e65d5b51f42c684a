"""The stages of `ntkft reproduce`, in run order: the one list that numbers them.

A stage is a module of this package with
- `Result`: its typed result (a `ResultModel`), written to `<name>/<name>.json` and read back by the report;
- `FILES`: the files it writes in its folder beside that JSON (listed in the report's provenance);
- `run(ctx, view) -> Result`: computes (or resumes) the stage; `view.of(OtherResult)` gives the results of the
  stages it needs, which the runner has run or read back first;
- `section(view, figs) -> Section`: its part of the report, built only from typed results.
Adding a stage: write its module and add one line to `STAGES` (its number is its place in the list). The
modules are named, not imported, here, so that the config can check stage numbers without importing the
stages (which import the config)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    """One stage: its name (folder and module) and the stages whose results it reads."""

    name: str
    needs: tuple[str, ...] = ()

    @property
    def number(self) -> int:
        """The stage's number in `--stages` (1-based place in `STAGES`)."""
        return [s.name for s in STAGES].index(self.name) + 1

    @property
    def file(self) -> str:
        """The stage's typed result, relative to the run folder."""
        return f"{self.name}/{self.name}.json"

    def module(self) -> Any:
        """The stage's module (`Result`, `FILES`, `run`, `section`)."""
        return importlib.import_module(f"{__package__}.{self.name}")


STAGES: tuple[Stage, ...] = (
    Stage("spectra"),  # eNTK spectra and beta (paper Section 7.1)
    Stage("curves"),  # learning curves with kernel GD beside them (Figures 2 and 10)
    Stage("rankings", ("spectra", "curves")),  # does beta rank sample efficiency?
    Stage("stopping", ("curves",)),  # the RWY rule, hold-out and the oracle on the kernel-GD path
    Stage("taskvec"),  # task vectors (Section 7.2, Figure 3)
)


def by_number(n: int) -> Stage:
    """The stage numbered `n` (1-based)."""
    return STAGES[n - 1]


def described() -> str:
    """'1 spectra, 2 curves, ...' for help texts and errors."""
    return ", ".join(f"{s.number} {s.name}" for s in STAGES)


def plan(selected: list[int]) -> list[Stage]:
    """The selected stages plus every stage they need (transitively), in registry order."""
    want = {by_number(n).name for n in selected}
    todo = list(want)
    while todo:
        name = todo.pop()
        for need in next(s for s in STAGES if s.name == name).needs:
            if need not in want:
                want.add(need)
                todo.append(need)
    return [s for s in STAGES if s.name in want]
