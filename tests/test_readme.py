"""README.md runs as written: every command and python block, at tiny scale through tests/readme_commands.py.

Drift between the README and the tool (a renamed flag, a removed command, an example that no longer runs)
fails here. Commands run in-process, in order, in one temporary folder (so `ntkft spectrum runs/rte-k/` reads the
kernel the line before it wrote)."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from conftest import ROOT, run_cli
from readme_commands import DATA_CSV, MODELS, PYTHON, TABLE

README = ROOT / "README.md"


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def commands(body: str) -> list[str]:
    """A bash block's commands: continuation lines joined, comments and blank lines dropped."""
    out, cur = [], ""
    for line in body.splitlines():
        cur += line.rstrip()
        if cur.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        cmd = re.sub(r"\s+#.*$", "", cur).strip()
        if cmd and not cmd.startswith("#"):
            out.append(re.sub(r"\s+", " ", cmd))
        cur = ""
    return out


def inline_commands(text: str) -> list[str]:
    """`ntkft ...` spans in the prose (outside code blocks)."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return [m.strip() for m in re.findall(r"`(ntkft [^`]+)`", prose)]


def row(cmd: str, inline: bool = False) -> tuple[str, str, dict[str, str]]:
    hits = [r for r in TABLE if re.search(r[0], cmd)]
    if inline and not hits:  # a bare command name (`ntkft kernel`, `ntkft finetune --help`) is only looked up
        bare = len(cmd.split()) == 2 or cmd.endswith(" --help")
        return ("", "elided" if bare else "parse", {})
    assert len(hits) == 1, (f"README command matches {len(hits)} rows of tests/readme_commands.py (need exactly 1): "
                            f"{cmd}")
    return hits[0]


def tiny(cmd: str, flags: dict[str, str]) -> list[str]:
    """The command's arguments with tiny models and the row's flag values."""
    args = [MODELS.get(a, a) for a in shlex.split(cmd)[1:]]
    for flag, value in flags.items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


def parse(args: list[str]) -> None:
    """Parse `ntkft ARGS` with the real CLI parser (flags, their types, required arguments), without running."""
    from typer.main import get_command

    from ntkft.cli import _register, app

    _register()
    cmd, parent, name, rest = get_command(app), None, "ntkft", [a for a in args if a != "..."]
    while True:
        ctx = cmd.make_context(name, list(rest), parent=parent)
        if not hasattr(cmd, "resolve_command"):
            return
        rest = [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]
        name, sub, rest = cmd.resolve_command(ctx, rest)
        assert sub is not None, f"no command {name}"
        cmd, parent = sub, ctx


def cli_commands() -> list[str]:
    from typer.main import get_command

    from ntkft.cli import _register, app

    _register()
    group = get_command(app)
    return list(group.list_commands(group.make_context("ntkft", ["--help"], resilient_parsing=True)))


def ntkft_args(cmd: str) -> list[str]:
    """The ntkft arguments of a line (`torchrun ... -m ntkft.cli ARGS` or `ntkft ARGS`)."""
    toks = shlex.split(cmd)
    if toks[0] == "torchrun":
        return toks[toks.index("ntkft.cli") + 1:]
    return toks[1:]


def test_every_readme_command_has_one_row():
    text = README.read_text()
    cmds = [(c, False) for lang, b in blocks(text) if lang == "bash" for c in commands(b)]
    assert cmds, "no commands found in README.md"
    used = {row(c, inline)[0] for c, inline in cmds + [(c, True) for c in inline_commands(text)]}
    unused = [r[0] for r in TABLE if r[0] not in used]
    assert not unused, f"rows of tests/readme_commands.py no README line uses: {unused}"


def test_readme_commands_run(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_text(DATA_CSV)
    make = (ROOT / "Makefile").read_text()
    block_cmds = [(c, False) for lang, b in blocks(text) if lang == "bash" for c in commands(b)]
    for cmd, inline in block_cmds + [(c, True) for c in inline_commands(text)]:
        _, how, flags = row(cmd, inline)
        if how == "make":
            target = cmd.split()[1]
            assert re.search(rf"^{target}:", make, re.M), f"README says `{cmd}`; the Makefile has no {target} target"
        elif how == "parse":
            parse(ntkft_args(cmd))
        elif how == "elided":
            assert cmd.split()[1] in cli_commands(), f"README names a command ntkft lacks: {cmd}"
        else:
            args = tiny(cmd, flags)
            code, out, err = run_cli(args, capsys)
            assert code == 0, f"README command failed ({' '.join(args)}):\n{out[-2000:]}\n{err[-2000:]}"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for lang, body in blocks(README.read_text()):
        if lang != "python":
            continue
        for old, new in PYTHON:
            body = body.replace(old, new)
        exec(compile(body, "README.md", "exec"), {})


def test_readme_task_spec_block_loads(tmp_path):
    """The YAML task spec shown in the README is a valid spec (its files created with a few rows)."""
    from ntkft.tasks import load_spec_file, load_task

    spec_text = next(b for lang, b in blocks(README.read_text()) if lang == "yaml" and "text_columns" in b)
    raw = yaml.safe_load(spec_text)
    for f in raw["files"].values():
        rows = [{"sentence1": f"a {i}", "sentence2": f"b {i}", "label": str(i % 2)} for i in range(6)]
        if f.endswith(".jsonl"):
            import json

            (tmp_path / f).write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            sep = "," if f.endswith(".csv") else "\t"
            (tmp_path / f).write_text("sentence1,sentence2,label\n".replace(",", sep)
                                      + "".join(sep.join(r.values()) + "\n" for r in rows))
    (tmp_path / "mytask.yaml").write_text(spec_text)
    data = load_task(load_spec_file(tmp_path / "mytask.yaml"), "train")
    assert len(data) == 6 and data.task.name == raw["name"]


@pytest.mark.parametrize("cmd", ["ntkft stop runs/x --no-such-flag 1", "ntkft nosuch"])
def test_parse_catches_drift(cmd):
    """The parser check can fail: an unknown flag or command raises."""
    with pytest.raises(Exception):  # noqa: B017  (click's UsageError from typer's vendored click)
        parse(shlex.split(cmd)[1:])
