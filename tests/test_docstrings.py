"""Every public function and class of ntkft says what it is for (a one- or two-line docstring)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import ntkft


def _public_objects():
    for info in pkgutil.walk_packages(ntkft.__path__, "ntkft."):
        if info.name.endswith("__main__"):
            continue
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if getattr(obj, "__module__", None) == mod.__name__:
                yield f"{mod.__name__}.{name}", obj


def test_public_functions_and_classes_have_docstrings():
    missing = [name for name, obj in _public_objects() if not (obj.__doc__ or "").strip()]
    assert not missing, f"{len(missing)} without a docstring: {', '.join(missing)}"
