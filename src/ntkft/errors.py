"""One exception family: raised where bad input is first seen, turned into one line by the CLI."""

from __future__ import annotations


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


def param_error(param: str, problem: str, kind: type[NtkftError] = ConfigError) -> NtkftError:
    """`kind("param: problem", param=param)`: the one way to blame an argument (the CLI shows it as `--param`)."""
    return kind(f"{param}: {problem}", param=param)
