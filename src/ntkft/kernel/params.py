"""Which parameters the kernel differentiates: all, backbone, head, or all but the embeddings."""

from __future__ import annotations

from enum import Enum

from torch import nn

from ..errors import ConfigError
from .contract import HEAD_PREFIX


class ParamGroup(str, Enum):
    """Which parameters the kernel differentiates (the gradient's coordinates)."""

    ALL = "all"
    BACKBONE = "backbone"
    HEAD = "head"
    NO_EMBEDDINGS = "no-embeddings"


def parse_group(group: ParamGroup | str) -> ParamGroup:
    """`group` as a ParamGroup; a ConfigError naming `params` and the choices otherwise."""
    try:
        return ParamGroup(group)
    except ValueError:
        raise ConfigError(f"params: unknown parameter group '{group}': use one of {', '.join(g.value for g in ParamGroup)}",
                          param="params") from None


def select_params(model: nn.Module, group: ParamGroup | str = ParamGroup.ALL) -> dict[str, nn.Parameter]:
    """Named parameters of `model` in `group`, each tied parameter once (under its first name)."""
    group = parse_group(group)
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        is_head = name.startswith(HEAD_PREFIX)
        keep = {
            ParamGroup.ALL: True,
            ParamGroup.BACKBONE: not is_head,
            ParamGroup.HEAD: is_head,
            ParamGroup.NO_EMBEDDINGS: id(p) not in embedding_ids,
        }[group]
        if keep:
            out[name] = p
    if not out:
        raise ConfigError(f"parameter group '{group.value}' selects no parameters of this model")
    return out


def num_params(params: dict[str, nn.Parameter]) -> int:
    """Number of scalar parameters in `params`."""
    return sum(p.numel() for p in params.values())
