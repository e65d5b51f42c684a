"""One exception family: raised where bad input is first seen, turned into one line by the CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar, overload

if TYPE_CHECKING:
    from pydantic import ValidationError


class NtkftError(Exception):
    """Base class of every error ntkft raises on purpose; the message is one line for the user.

    `param` names the Python parameter or config field at fault, if any; the CLI shows it as a flag."""

    param: str | None = None

    def __init__(self, message: str = "", *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class DataError(NtkftError):
    """A task file, row or column is missing or malformed."""


class ModelError(NtkftError):
    """A model spec cannot be resolved or loaded."""


class KernelError(NtkftError):
    """A kernel computation got bad input or produced non-finite values."""


class ConfigError(NtkftError):
    """An argument or config value is invalid."""


class TrainingError(NtkftError):
    """Training hit a non-finite loss; the last good checkpoint was kept."""


E = TypeVar("E", bound=NtkftError)


@overload
def param_error(param: str, problem: str) -> ConfigError: ...
@overload
def param_error(param: str, problem: str, kind: type[E]) -> E: ...
def param_error(param: str, problem: str, kind: type[NtkftError] = ConfigError) -> NtkftError:
    """`kind("param: problem", param=param)`: the one way to blame an argument (the CLI shows it as `--param`);
    typed as the `kind` it makes (ConfigError by default)."""
    return kind(f"{param}: {problem}", param=param)


def config_error(e: ValidationError, where: str = "") -> ConfigError:
    """The first pydantic error as a ConfigError whose message starts with the field name."""
    err = e.errors()[0]
    names = [str(x) for x in err["loc"] if not isinstance(x, int)]
    items = [f" (item {x + 1})" for x in err["loc"] if isinstance(x, int)]  # a list's element, counted from 1
    loc = ".".join(names) + "".join(items)
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not loc:  # a check across fields: its message starts with the field it blames
        head, sep, rest = msg.partition(": ")
        loc, msg = (head, rest) if sep and head.isidentifier() else ("config", msg)
    if err.get("type") == "extra_forbidden":
        msg = "unknown field"
    if err["loc"] and "input" in err and err.get("type") != "missing" and not isinstance(err["input"], (dict, list)) \
            and str(err["input"]) not in msg:
        msg += f" (got {err['input']!r})"
    if where:  # a config file: name the file and its key (the value may have come from the file)
        return ConfigError(f"{where}: {loc}: {msg}")
    return ConfigError(f"{loc}: {msg}", param=loc.split(" (item ")[0].split(".")[0] if loc != "config" else None)
