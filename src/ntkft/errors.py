"""One exception family: raised where bad input is first seen, turned into one line by the CLI."""

from __future__ import annotations


class NtkftError(Exception):
    """Base class of every error ntkft raises on purpose; the message is one line for the user."""


class DataError(NtkftError):
    """A task file, row or column is missing or malformed."""


class ModelError(NtkftError):
    """A model spec cannot be resolved or loaded."""


class KernelError(NtkftError):
    """A kernel computation got bad input or produced non-finite values."""


class ConfigError(NtkftError):
    """An argument or config value is invalid."""
