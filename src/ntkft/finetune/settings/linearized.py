"""The linearised model (Lemma 1): f_PT(x) + <theta - theta_PT, grad f_PT(x)>, trained through jvp; its eNTK is
fixed, so kernel drift is not tracked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .base import Setting

if TYPE_CHECKING:
    from torch import nn

    from ...models import Readout


@dataclass(frozen=True)
class LinearizedSetting(Setting):
    def wrap(self, readout: Readout) -> nn.Module:
        from ..models import Linearized

        return Linearized(readout)


SETTING = LinearizedSetting("linearized", "f_PT + <theta - theta_PT, grad f_PT> (Lemma 1), trained through jvp",
                            trains="delta = theta - theta_PT", optimizer="adamw", lr={"adamw": 2e-5, "gd": 1e-2},
                            max_steps=200, tracks_drift=False)
