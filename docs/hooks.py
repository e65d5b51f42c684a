"""MkDocs hooks: one page per `ntkft` command generated from the CLI itself, and MathJax copied from the
django-static-mathjax package into the site (offline: no CDN)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _arg_name(p: Any) -> str:
    return str(getattr(p, "metavar", None) or (p.name or "").upper())


def _cli() -> Any:
    if SRC not in sys.path:  # this checkout's ntkft, not an installed one (mkdocs restores sys.path after loading hooks)
        sys.path.insert(0, SRC)
    from typer.main import get_command

    from ntkft.cli import _register, app

    _register()
    return get_command(app)


def _walk(cmd: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    """(command path, click command) of every leaf command, sub-apps (taskvec, theory) expanded."""
    subs = getattr(cmd, "commands", None)
    if not subs:
        return [(path, cmd)]
    return [leaf for name in sorted(subs) for leaf in _walk(subs[name], [*path, name])]


def _option_rows(cmd: Any) -> list[str]:
    rows = []
    for p in cmd.params:
        if getattr(p, "hidden", False):
            continue
        names = " / ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts]) if p.param_type_name == "option" \
            else f"`{_arg_name(p)}`"
        helptext = (getattr(p, "help", None) or "").replace("|", "\\|").replace("\n", " ")
        default = p.default if p.default not in (None, (), []) and not callable(p.default) else ""
        rows.append(f"| {names} | {helptext} | {'' if default == '' else f'`{default}`'} |")
    return rows


def command_page(top: str, leaves: list[tuple[list[str], Any]]) -> str:
    """Markdown for one top-level command (and its subcommands), from click's own help texts."""
    out = [f"# ntkft {top}\n", "Generated from the command line itself (`ntkft " + top + " --help`).\n"]
    for path, cmd in leaves:
        name = " ".join(["ntkft", *path])
        if len(leaves) > 1:
            out.append(f"## {name}\n")
        if getattr(cmd, "deprecated", False):
            out.append("!!! warning\n    Deprecated.\n")
        out.append((cmd.help or "").strip() + "\n")
        args = " ".join(_arg_name(p) for p in cmd.params if p.param_type_name == "argument")
        out.append(f"```text\n{name} [OPTIONS] {args}\n```\n")
        rows = _option_rows(cmd)
        if rows:
            out += ["| option | what | default |", "|---|---|---|", *rows, ""]
    return "\n".join(out)


def on_config(config: Any) -> Any:
    """The nav gets a Commands section (one page per top-level command), after Getting started."""
    tops = sorted(getattr(_cli(), "commands", {}))
    section = {"Commands": [{f"ntkft {t}": f"commands/{t}.md"} for t in tops]}
    nav = list(config["nav"] or [])
    at = next((i + 1 for i, item in enumerate(nav) if "Getting started" in item), len(nav))
    config["nav"] = [*nav[:at], section, *nav[at:]]
    return config


def on_files(files: Files, config: Any) -> Files:
    group = _cli()
    for top in sorted(group.commands):
        leaves = _walk(group.commands[top], [top])
        files.append(File.generated(config, f"commands/{top}.md", content=command_page(top, leaves)))
    return files


def on_post_build(config: Any) -> None:
    import mathjax  # django-static-mathjax

    src = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / "tex-svg.js"
    dst = Path(config["site_dir"]) / "javascripts" / "tex-svg.js"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
