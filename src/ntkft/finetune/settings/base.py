"""What a fine-tuning setting is: its name, what trains, its defaults and which options apply (see __init__)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from ...models import LoadedModel, Readout


@dataclass(frozen=True)
class Setting:
    """One fine-tuning setting of the paper (Section 5.1, Remark 5.1, Lemma 1). Subclass it in its own file to
    change the module (`wrap`); the defaults feed FinetuneConfig, the rest the Trainer."""

    name: str
    about: str  # one line for --help
    trains: str  # which parts train, in words
    optimizer: str  # default optimiser: "adamw" | "gd" | "ridge" (closed form on frozen features)
    lr: dict[str, float | None]  # default learning rate per optimiser; None = 1/(2 lambda_max) of the cached features
    max_steps: int  # default optimiser steps at most
    options: frozenset[str] = field(default_factory=frozenset)  # options that apply only to some settings: "layers"
    frozen_backbone: bool = False  # backbone features are computed once and only the head trains
    tracks_drift: bool = True  # the eNTK can move (False for the linearised model, whose kernel is fixed)

    def wrap(self, readout: Readout) -> nn.Module:
        """The trainable module around the readout (the readout itself unless a setting says otherwise)."""
        return readout

    def default_lr(self, optimizer: str) -> float | None:
        """The learning rate this setting starts from with `optimizer` (None: derived from the features)."""
        return self.lr.get(optimizer, 2e-5)

    def build(self, loaded: LoadedModel, out_dim: int, layers: int | None, sigma: float, seed: int) -> nn.Module:
        """The trainable module; frozen parts have requires_grad False."""
        from ...models import Readout
        from . import takes_layers

        if layers is not None:
            if "layers" not in self.options:
                raise ConfigError(f"layers: applies to settings {', '.join(takes_layers())}, not '{self.name}'", param="layers")
            loaded = loaded.truncate(layers)
        readout = Readout.from_loaded(loaded, out_dim=out_dim, sigma=sigma, seed=seed)
        if self.frozen_backbone:
            for p in readout.backbone.parameters():
                p.requires_grad_(False)
        return self.wrap(readout)
