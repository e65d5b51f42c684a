"""`reproduce(cfg, out)`: the registry's stages in order, each cached in its own run folder under `out`, then
the report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .._results import ResultModel
from .._runs import RunFolder
from ..errors import ConfigError
from .config import ReproConfig
from .context import Context, exclusive, read_json
from .registry import STAGES, Stage, described, plan
from .report import write_report
from .tables import RunView

LAYOUT = 1  # version of the run folder's layout (stage folders, unit names)


@dataclass
class ReproResult:
    """What one call produced: each stage's typed result, the report paths and the seconds per stage."""

    out: Path
    stages: dict[str, Any] = field(default_factory=dict)  # stage name -> its module's `Result`
    seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None
    summary: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """Paths, timings and every stage's result as plain data."""
        return {"out": str(self.out), "seconds": self.seconds, "report": str(self.report), "summary": str(self.summary),
                "stages": {k: v.to_dict() for k, v in self.stages.items()}}


def plan_stages(selected: list[int]) -> list[int]:
    """The selected stage numbers plus those of the stages they read, in order."""
    return [s.number for s in plan(selected)]


def reproduce(cfg: ReproConfig, out: str | Path, data_dir: str | None = None, overwrite: bool = False,
              progress: bool = True) -> ReproResult:
    """Run the selected stages under `out` (resuming finished work), write config.json, timings.json, the
    HTML report and the Markdown summary, and mark the folder complete when every stage is."""
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root}: output path exists and is not a folder")
    bad = [s for s in cfg.stages if not 1 <= s <= len(STAGES)]
    if bad:  # (the config checks this too; a config built with model_construct does not)
        raise ConfigError(f"stages: {bad} are not stages ({described()})")
    with exclusive(root):
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
    order = plan(cfg.stages)
    view = RunView(cfg=cfg.model_dump())
    overall = tqdm(order, desc="reproduce", disable=not progress, unit="stage", position=0)
    for st in overall:
        overall.set_postfix_str(st.name)
        t0 = time.time()
        result: ResultModel = st.module().run(ctx, view)  # its needs ran before it (registry order)
        view.results.append(result)
        res.stages[st.name] = result
        res.seconds[st.name] = round(time.time() - t0, 1)
        timings[st.name] = timings.get(st.name, 0.0) + res.seconds[st.name]
        top.write_json("timings.json", timings)
    overall.close()
    res.report, res.summary = write_report(top)
    if all(_complete(root, st) for st in order):
        top.finish(command="reproduce", stages=[st.number for st in order])
        res.report, res.summary = write_report(top)  # again, so the report shows the finished run's metadata
    return res


def _complete(root: Path, st: Stage) -> bool:
    meta = read_json(root / st.name / "meta.json")
    return isinstance(meta, dict) and meta.get("status") == "complete"
