"""The fine-tuning settings in one registry: each `Setting` carries its name, what trains, its defaults (optimiser,
learning rate, steps), the options that apply to it and its module (`build`).

Adding a setting = a new file here defining `SETTING` (a `Setting`, or a subclass overriding `wrap`) and one line in
`SETTINGS` below; FinetuneConfig, the CLI's help, the reproduction's config and the Trainer read it from here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator

from ...errors import ConfigError
from . import full, head, linearized, probe
from .base import Setting

if TYPE_CHECKING:
    from torch import nn

    from ...models import LoadedModel, Readout

SETTINGS: dict[str, Setting] = {s.name: s for s in (
    full.SETTING,
    head.SETTING,
    probe.SETTING,
    linearized.SETTING,
)}

# The registry's defaults as a table (setting, optimiser) -> learning rate, for readers of the old constant.
DEFAULT_LR: dict[tuple[str, str], float | None] = {(s.name, o): lr for s in SETTINGS.values() for o, lr in s.lr.items()}


def get_setting(name: str) -> Setting:
    """The registered setting `name` (ConfigError naming `setting` otherwise)."""
    if name not in SETTINGS:
        raise ConfigError(f"setting: unknown '{name}', use one of {', '.join(SETTINGS)}", param="setting")
    return SETTINGS[name]


def _known(name: str) -> str:
    if name not in SETTINGS:
        raise ValueError(f"unknown '{name}', use one of {', '.join(SETTINGS)}")
    return name


SettingName = Annotated[str, AfterValidator(_known)]
"""A config field holding the name of a registered setting (pydantic checks it against SETTINGS)."""


def takes_layers() -> list[str]:
    """The settings that may cut the backbone after --layers blocks."""
    return [s.name for s in SETTINGS.values() if "layers" in s.options]


def readout_of(model: nn.Module) -> Readout:
    """The plain Readout a trained module stands for (the linearised model's theta_PT + delta)."""
    from ..models import Linearized

    return model.merged() if isinstance(model, Linearized) else model  # type: ignore[return-value]


def build(loaded: LoadedModel, setting: str, out_dim: int, layers: int | None, sigma: float, seed: int) -> nn.Module:
    """The trainable module of `setting` (see SETTINGS)."""
    return get_setting(setting).build(loaded, out_dim, layers, sigma, seed)


__all__ = ["DEFAULT_LR", "SETTINGS", "Setting", "SettingName", "build", "get_setting", "readout_of", "takes_layers"]
