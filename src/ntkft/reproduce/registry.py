"""The stages of `ntkft reproduce`, in run order: the one list that numbers them.

A stage is a module of this package with
- `Options`: its settings, a `RunOptions` subclass (options.py) with its fields, their descriptions and
  validators (empty for a stage without settings of its own); they are flat fields of `ReproConfig`, so each
  is a YAML key and a `--flag` of `ntkft reproduce` (help = its description). The stage reads them, statically
  typed, as `ctx.options(Options)`, and another stage's as `ctx.options(that_module.Options)`;
- `Result`: its typed result (a `ResultModel`), written to `<name>/<name>.json` and read back by the report;
- `FILES`: the files it writes in its folder beside that JSON (listed in the report's provenance; a name
  ending in '/' is a folder of units);
- `run(ctx, view) -> Result`: computes (or resumes) the stage; `view.of(OtherResult)` gives the results of the
  stages it needs, which the runner has run or read back first;
- `section(view, figs) -> Section`: its part of the report, built only from typed results.
Adding a stage: write its module, add one line to `STAGES` (its number is its place in the list) and add its
`Options` to the bases of `ReproConfig` in config.py (the last stage first: pydantic orders fields from the
last base up; a test checks the bases against this list). That base entry is the one step this list cannot
do: mypy types `cfg.kernel_n` only on a class whose bases are written out, not one built from a list.
Import direction: config.py imports the stage modules (for their `Options`), so a stage never imports
config.py, not even for type checking; it types the config through `Context.cfg` (the run-wide
`RunOptions`) and `ctx.options(...)`. The modules are named, not imported, here, so that options.py (the
`stages` field, which every stage's Options holds) can read this list without importing the stages.
A validator method's name must not repeat one of another stage's `Options` (pydantic keeps one validator per
name across ReproConfig's bases); a check shared by stages is an annotated type (`TaskList`). A check across
stages' settings (e.g. `tune_size` against the models' sizes) is a validator of ReproConfig."""

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
