"""The fine-tuning settings in one registry: how each builds its module, what trains, what it saves.

Adding a setting = one `Setting` entry here (and its default learning rates in config.DEFAULT_LR)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from ..models import LoadedModel, Readout
from .models import Linearized


@dataclass(frozen=True)
class Setting:
    """One fine-tuning setting of the paper (Section 5.1, Remark 5.1, Lemma 1)."""

    name: str
    about: str
    takes_layers: bool  # may cut the backbone after --layers blocks
    frozen_backbone: bool  # backbone features are computed once and only the head trains
    wrap: Callable[[Readout], nn.Module]  # the trainable module around the readout
    tracks_drift: bool = True  # the eNTK can move (false for the linearised model, whose kernel is fixed)

    def build(self, loaded: LoadedModel, out_dim: int, layers: int | None, sigma: float, seed: int) -> nn.Module:
        """The trainable module; frozen parts have requires_grad False."""
        if layers is not None:
            if not self.takes_layers:
                raise ConfigError(f"layers: applies to settings {', '.join(s for s in SETTINGS if SETTINGS[s].takes_layers)}"
                                  f", not '{self.name}'", param="layers")
            loaded = loaded.truncate(layers)
        readout = Readout.from_loaded(loaded, out_dim=out_dim, sigma=sigma, seed=seed)
        if self.frozen_backbone:
            for p in readout.backbone.parameters():
                p.requires_grad_(False)
        return self.wrap(readout)


def readout_of(model: nn.Module) -> Readout:
    """The plain Readout a trained module stands for (the linearised model's theta_PT + delta)."""
    return model.merged() if isinstance(model, Linearized) else model  # type: ignore[return-value]


SETTINGS: dict[str, Setting] = {s.name: s for s in [
    Setting("full", "all weights trained (Setting 1)", False, False, lambda r: r),
    Setting("head", "backbone cut after --layers blocks + new head, all trained (Setting 2)", True, False, lambda r: r),
    Setting("probe", "frozen backbone, head only (Remark 5.1); features computed once", True, True, lambda r: r),
    Setting("linearized", "f_PT + <theta - theta_PT, grad f_PT> (Lemma 1), trained through jvp", False, False,
            Linearized, tracks_drift=False),
]}


def get_setting(name: str) -> Setting:
    """The registered setting `name` (ConfigError naming `setting` otherwise)."""
    if name not in SETTINGS:
        raise ConfigError(f"setting: unknown '{name}', use one of {', '.join(SETTINGS)}", param="setting")
    return SETTINGS[name]


def build(loaded: LoadedModel, setting: str, out_dim: int, layers: int | None, sigma: float, seed: int) -> nn.Module:
    """The trainable module of `setting` (see SETTINGS)."""
    return get_setting(setting).build(loaded, out_dim, layers, sigma, seed)
