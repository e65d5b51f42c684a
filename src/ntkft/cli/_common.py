"""Command-line pieces shared by every command module: the app, task arguments, JSON output."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Optional, Union, cast, get_args, get_origin

import typer
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from ..errors import NtkftError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="eNTK, spectra and early stopping for fine-tuning.")

DataDir = typer.Option(None, "--data-dir", help="task data directory (default: $NTKFT_DATA_DIR, then ./data)")


def flag_message(e: NtkftError) -> str:
    """The error's message with its Python parameter name shown as the CLI flag (`lr` -> `--lr`)."""
    param = getattr(e, "param", None)
    msg = str(e)
    if param and msg.startswith((f"{param}:", f"{param} (item ")):
        return f"--{param.replace('_', '-')}" + msg[len(param):]
    return msg


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (numpy arrays and paths allowed)."""
    from .._io import write_json as _w

    _w(path, obj)


# ---------------------------------------------------------------- options generated from pydantic configs


def _option_type(annotation: Any) -> type:
    """The click type for a config field: plain scalars keep theirs; unions, literals and lists are
    parsed from a string as YAML (so `--val 100` is an int and `--val 0.2` a float) and validated by pydantic."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if annotation in (int, float, str, bool):
        return annotation
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1 and args[0] in (int, float, str, bool):
        return args[0]
    return str


def _is_list(annotation: Any) -> bool:
    """A list field (also inside Optional): its flag may be repeated (`--finetuned a --finetuned b`)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    inner = args[0] if get_origin(annotation) in (Union, UnionType) and len(args) == 1 else annotation
    return get_origin(inner) is list


def _parse(value: Any, annotation: Any) -> Any:
    """A string flag as the field wants it: lists split on commas, literals and strings as given, the rest as YAML.
    A repeated list flag arrives as a list of strings: each is split the same way and the parts joined."""
    if isinstance(value, (list, tuple)) and _is_list(annotation):
        parts = [_parse(v, annotation) for v in value]
        return [x for p in parts for x in (p if isinstance(p, list) else [p])]
    if not isinstance(value, str) or _option_type(annotation) is not str or annotation is str:
        return value
    args = [a for a in get_args(annotation) if a is not type(None)]
    inner = args[0] if get_origin(annotation) in (Union, UnionType) and len(args) == 1 else annotation
    if get_origin(inner) is list:
        if value.strip().startswith("["):
            return yaml.safe_load(value)
        return [x.strip() for x in value.split(",") if x.strip()]
    if get_origin(inner) is Literal or inner is str:
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def config_options(cls: type[BaseModel], skip: frozenset[str] | set[str] = frozenset()) -> list[inspect.Parameter]:
    """One keyword-only `--field-name` option per field of `cls` (help = the field's description), plus `--config`."""
    params = [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                                default=typer.Option(None, "--config", help=f"YAML file with {cls.__name__} fields"))]
    own = cls.__dict__.get("__annotations__", {})  # a subclass's own fields first (KernelConfig: model, task...)
    for name, field in sorted(cls.model_fields.items(), key=lambda kv: kv[0] not in own):
        if name in skip:
            continue
        typ = _option_type(field.annotation)
        default = field.default if field.default is not PydanticUndefined else None
        shown = default.value if isinstance(default, Enum) else default
        hint = f" \\[default: {shown}]" if default is not None else ""  # escaped: rich markup ate "[default: ...]"
        kinds = get_args(field.annotation) if get_origin(field.annotation) is Literal else ()
        choices = f" ({' | '.join(map(str, kinds))})" if kinds else ""
        more = field.json_schema_extra.get("flags") if isinstance(field.json_schema_extra, dict) else None
        aliases = [str(f) for f in more] if isinstance(more, list) else []  # further flags, e.g. --samples for --n
        if typ is bool:
            opt = typer.Option(None, f"--{name.replace('_', '-')}/--no-{name.replace('_', '-')}",
                               help=(field.description or "") + hint, show_default=False)
        elif _is_list(field.annotation):  # repeatable; each value may also be a comma-separated list
            opt = typer.Option(None, f"--{name.replace('_', '-')}", show_default=False, metavar="LIST",
                               help=(field.description or name) + " (repeat the flag or separate with commas)" + hint)
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[list[str]],
                                            default=opt))
            continue
        else:
            opt = typer.Option(None, f"--{name.replace('_', '-')}", *aliases,
                               help=(field.description or name) + choices + hint, show_default=False)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[typ], default=opt))
    return params


def load_config(cls: type[BaseModel], config: str | None, given: dict[str, Any]) -> Any:
    """A validated `cls` from an optional YAML file overridden by the flags that were given."""
    from ..config import load_config as _load

    flags = {k: _parse(v, cls.model_fields[k].annotation) for k, v in given.items()
             if v is not None and v != [] and k in cls.model_fields}
    return _load(cls, config, flags)


def config_command(cls: type[BaseModel], name: str | None = None, skip: frozenset[str] | set[str] = frozenset(),
                   extra: list[inspect.Parameter] | None = None,
                   target: typer.Typer | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn(cfg, **extra)` as a command whose options are generated from the pydantic model `cls`.

    `extra` are further typer parameters (e.g. `--out`, `--overwrite`) passed to `fn` by name; `target` is a
    sub-app (`ntkft taskvec add`) instead of the top-level app."""
    extra = list(extra or [])

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        params = extra + config_options(cls, skip)

        def command(**kw: Any) -> Any:
            config = kw.pop("config", None)
            extras = {p.name: kw.pop(p.name) for p in extra}
            return fn(load_config(cls, config, kw), **extras)

        cast(Any, command).__signature__ = inspect.Signature(params)  # what typer reads the options from
        command.__doc__ = fn.__doc__
        command.__name__ = fn.__name__
        (target or app).command(name or fn.__name__.replace("_", "-"))(command)
        return fn

    return decorate


def option(name: str, default: Any, help: str, annotation: Any = str, flag: str | None = None) -> inspect.Parameter:
    """A plain extra typer option for `config_command(extra=...)`."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, flag or f"--{name.replace('_', '-')}", help=help))
