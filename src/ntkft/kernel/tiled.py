"""Methods whose K tiles contract per-batch features (jacobian, jvp): one work unit per row of tiles.

A row unit computes the features of its batch once, then every tile of its row (for symmetric K only
the tiles on and right of the diagonal), recomputing the column batches' features: memory stays at two
batches of features whatever N is."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import KernelError
from .checkpoint import Store
from .contract import KernelModel, out_dim
from .plan import Block, Inputs, Options, Pass, Plan, Unit, batches, sort_by_length


class TiledMethod:
    """Base of the tiled methods: subclasses give `features(ids, mask)`, `tile(fi, fj)` and `bytes_per_sample()`."""

    exact = True
    name = "tiled"
    default_batch = 8

    def __init__(self, model: KernelModel, params: dict[str, nn.Parameter], options: Options) -> None:
        self.model, self.params, self.opt = model, params, options
        self.c = out_dim(model)

    def features(self, ids: torch.Tensor, mask: torch.Tensor) -> Any:
        raise NotImplementedError

    def tile(self, fi: Any, fj: Any) -> torch.Tensor:
        raise NotImplementedError

    def bytes_per_sample(self) -> int:
        raise NotImplementedError

    def plan(self, x1: Inputs, x2: Inputs | None) -> Plan:
        self.x1, self.x2 = x1, x2
        per = self.bytes_per_sample()
        fit = self.opt.max_memory // (2 * per)
        if fit < 1:
            raise KernelError(f"max_memory {self.opt.max_memory / 2**20:.0f} MiB is too small for even one tile "
                              f"(this method needs ~{2 * per / 2**20:.0f} MiB for two samples)")
        size = int(min(self.opt.batch_size or self.default_batch, fit))
        sym = x2 is None
        other = x1 if x2 is None else x2
        self.b1 = batches(x1, sort_by_length(x1), size)
        self.b2 = self.b1 if sym else batches(other, sort_by_length(other), size)
        order1 = [i for b in self.b1 for i in b]
        order2 = [i for b in self.b2 for i in b]
        n_cols = len(self.b2)
        units = [Unit(f"r{i}", "tiles", float(n_cols - i if sym else n_cols), {"row": i}) for i in range(len(self.b1))]
        return Plan(self.name, x1.n, other.n, self.c, sym, order1, order2, [Pass([], units)], False,
                    {"batch_size": size})

    def compute_unit(self, unit: Unit, store: Store) -> Block:
        i = unit.data["row"]
        sym = self.x2 is None
        x2 = self.x1 if self.x2 is None else self.x2
        dev = self.opt.device
        fi = self.features(*(t.to(dev) for t in self.x1.take(self.b1[i])))
        j0 = i if sym else 0
        tiles = []
        for j in range(j0, len(self.b2)):
            fj = fi if (sym and j == i) else self.features(*(t.to(dev) for t in x2.take(self.b2[j])))
            tiles.append(self.tile(fi, fj))
        row0 = sum(len(b) for b in self.b1[:i]) * self.c
        col0 = sum(len(b) for b in self.b2[:j0]) * self.c
        return Block(row0, col0, torch.cat(tiles, 1))
