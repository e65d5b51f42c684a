"""`reproduce(cfg, out)`: the five stages in order, each cached in its own run folder under `out`, then the report."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .._runs import RunFolder
from ..errors import ConfigError, NtkftError
from . import curves, rankings, spectra, stopping, taskvec
from .config import ReproConfig
from .context import Context, read_json
from .report import write_report

log = logging.getLogger(__name__)

LAYOUT = 1  # version of the run folder's layout (stage folders, unit names)
NAMES = {1: "spectra", 2: "curves", 3: "rankings", 4: "stopping", 5: "taskvec"}
NEEDS = {3: [1, 2], 4: [2]}  # a stage's inputs are run (or read back from their caches) first


@dataclass
class ReproResult:
    """What one call produced: each stage's result object, the report paths and the seconds per stage."""

    out: Path
    stages: dict[str, object] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None
    summary: Path | None = None

    def to_dict(self) -> dict:
        return {"out": str(self.out), "seconds": self.seconds, "report": str(self.report), "summary": str(self.summary),
                "stages": {k: v.to_dict() for k, v in self.stages.items()}}  # type: ignore[attr-defined]


def plan_stages(selected: list[int]) -> list[int]:
    """The selected stages plus the stages they read, in order."""
    out = set(selected)
    for s in selected:
        out.update(NEEDS.get(s, []))
    return sorted(out)


@contextmanager
def _exclusive(root: Path):
    """Hold the run folder's lock for the run: two processes must never write one run folder."""
    from .._runs import locked

    with locked(root):
        yield


def reproduce(cfg: ReproConfig, out: str | Path, data_dir: str | None = None, overwrite: bool = False,
              progress: bool = True) -> ReproResult:
    """Run the selected stages under `out` (resuming finished work), write config.json, timings.json, the
    HTML report and the Markdown summary, and mark the folder complete when every stage is."""
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root}: output path exists and is not a folder")
    with _exclusive(root):
        return _reproduce(cfg, root, data_dir, overwrite, progress)


def _reproduce(cfg: ReproConfig, root: Path, data_dir: str | None, overwrite: bool, progress: bool) -> ReproResult:
    ctx = Context(cfg, root, data_dir, progress, overwrite)
    # every unit inside carries its own key (weights, data, settings), so the folder's key is its layout version
    top = RunFolder(root, "reproduce", {"layout": LAYOUT}, overwrite)
    top.open()
    ctx.top = top
    top.write_json("config.json", cfg.model_dump() | {"tune_size": cfg.tuning_size})
    res = ReproResult(root)
    timings = read_json(root / "timings.json") or {}
    order = plan_stages(cfg.stages)
    overall = tqdm(order, desc="reproduce", disable=not progress, unit="stage", position=0)
    for s in overall:
        name = NAMES[s]
        overall.set_postfix_str(name)
        t0 = time.time()
        if s == 1:
            res.stages[name] = spectra.run(ctx)
        elif s == 2:
            res.stages[name] = curves.run(ctx)
        elif s == 3:
            res.stages[name] = rankings.run(ctx, res.stages["spectra"], res.stages["curves"])  # type: ignore[arg-type]
        elif s == 4:
            res.stages[name] = stopping.run(ctx, res.stages["curves"])  # type: ignore[arg-type]
        else:
            try:
                res.stages[name] = taskvec.run(ctx)
            except NtkftError as e:  # stage 5 leans on another package: report, never lose stages 1-4
                log.warning("stage 5 failed: %s", e)
                res.stages[name] = taskvec.TaskVecStage(taskvec.taskvec_model(ctx), list(cfg.taskvec_tasks),
                                                        skipped=f"failed: {e}")
        res.seconds[name] = round(time.time() - t0, 1)
        timings[name] = timings.get(name, 0.0) + res.seconds[name]
        top.write_json("timings.json", timings)
    overall.close()
    res.report, res.summary = write_report(top)
    complete = all((root / NAMES[s] / "meta.json").is_file() and
                   (read_json(root / NAMES[s] / "meta.json") or {}).get("status") == "complete" for s in order)
    if complete:
        top.finish(command="reproduce", stages=order)
        res.report, res.summary = write_report(top)  # again, so the report shows the finished run's metadata
    return res
