"""Save and load a fine-tuned model: a Hugging Face directory (safetensors backbone + tokenizer), the task head
in `head.safetensors` (weight, bias) and `ntkft.json` ({setting, layers, task, base_model, kind, out_dim, ...}).

Shared by `ntkft finetune` (writes OUT/model/) and `ntkft.taskvec` (reads fine-tuned checkpoints, writes merged
models whose task heads live in `heads/<task>/`). Writes are atomic: a temporary folder renamed into place; an
existing folder is replaced only when it is itself an ntkft checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from .._io import save_tensors, write_json
from ..errors import ModelError
from .readout import Readout
from .zoo import LoadedModel, load_model

INFO = "ntkft.json"
HEAD = "head.safetensors"
HEADS = "heads"  # merged models: heads/<task>/head.safetensors (+ ntkft.json with that task's info)


def checkpoint_dir(path: str | Path) -> Path:
    """The HF directory behind `path`: the folder itself, or `path/model` for an ntkft run folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"{p}: no such checkpoint (expected an HF directory or an ntkft run folder)")
    if not p.is_dir():
        raise ModelError(f"{p}: a checkpoint is a directory (HF model folder or ntkft run folder), not a file")
    if _is_hf_dir(p):
        return p
    if _is_hf_dir(p / "model"):
        return p / "model"
    raise ModelError(f"{p}: not a checkpoint: no Hugging Face config.json (with model_type) here or in {p / 'model'}")


def _is_hf_dir(p: Path) -> bool:
    """True for a folder whose config.json is a transformers config (a run folder's config.json is not)."""
    try:
        return "model_type" in json.loads((p / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def read_info(path: str | Path) -> dict[str, Any]:
    """`ntkft.json` of a checkpoint directory ({} for a plain HF directory)."""
    f = Path(path) / INFO
    if not f.is_file():
        return {}
    try:
        info = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise ModelError(f"{f}: must hold a JSON object")
    return info


def read_head(path: str | Path) -> dict[str, torch.Tensor]:
    """{'weight': (C, n), 'bias': (C,)} from a head.safetensors file (one-line errors)."""
    from safetensors.torch import load_file

    f = Path(path)
    if not f.is_file():
        raise ModelError(f"{f}: head file not found")
    try:
        t = load_file(str(f))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ModelError(f"{f}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    for key in ("weight", "bias"):
        if key not in t:
            raise ModelError(f"{f}: head has no tensor '{key}' (found {', '.join(sorted(t)) or 'none'})")
    w, b = t["weight"], t["bias"]
    if w.dim() != 2 or b.shape != (w.shape[0],):
        raise ModelError(f"{f}: head weight {tuple(w.shape)} and bias {tuple(b.shape)} do not form a (C, n) linear layer")
    return {"weight": w, "bias": b}


def _replace_dir(tmp: Path, path: Path) -> None:
    """Move the finished `tmp` to `path`; an existing `path` must be an ntkft checkpoint (or empty)."""
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path}: exists and is not a folder; refusing to replace it")
        if any(path.iterdir()) and not (path / INFO).is_file():
            raise ModelError(f"{path}: exists and is not an ntkft checkpoint (no {INFO}); refusing to replace it")
        old = path.with_name(f".ntkft-old-{path.name}-{uuid.uuid4().hex[:8]}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def save_finetuned(readout: Readout, tokenizer: Any, path: str | Path, info: dict[str, Any]) -> Path:
    """Write `readout` as OUT: HF directory (safetensors) + tokenizer + head.safetensors + ntkft.json (atomic).

    `info` is stored in ntkft.json (e.g. setting, layers, task, base_model); kind and out_dim come from the readout."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".ntkft-tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        backbone: Any = readout.backbone
        backbone.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_tensors(tmp / HEAD, {"weight": readout.head.weight.detach(), "bias": readout.head.bias.detach()})
        write_json(tmp / INFO, {**info, "kind": readout.kind, "out_dim": int(readout.out_dim)})
        _replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _with_kind(loaded: LoadedModel, kind: str) -> LoadedModel:
    """The same model read as `kind` (encoder: right padding + mean pooling; decoder: left padding + last token)."""
    if kind not in ("encoder", "decoder"):
        raise ModelError(f"kind must be 'encoder' or 'decoder', got {kind!r}")
    if loaded.kind == kind:
        return loaded
    tok: Any = loaded.tokenizer
    tok.padding_side = "left" if kind == "decoder" else "right"
    return dataclasses.replace(loaded, kind="decoder" if kind == "decoder" else "encoder")


def _pick_head(d: Path, info: dict[str, Any], head: str | None) -> tuple[Path | None, dict[str, Any]]:
    """The head file to use and the info that goes with it (merged models hold one head per task)."""
    heads = info.get("heads") or {}
    if head is not None:
        if head not in heads:
            have = ", ".join(heads) or "none"
            raise ModelError(f"{d}: has no head for task '{head}' (heads: {have})")
        entry = heads[head]
        return d / entry["file"], {**info, **entry.get("info", {}), "head_of": head}
    if heads:
        if len(heads) > 1:
            raise ModelError(f"{d}: holds heads for {', '.join(heads)}; choose one with head=<task>")
        (name, entry), = heads.items()
        return d / entry["file"], {**info, **entry.get("info", {}), "head_of": name}
    return (d / HEAD if (d / HEAD).is_file() else None), info


def load_finetuned(path: str | Path, head: str | None = None, dtype: torch.dtype = torch.float32,
                   sigma: float = 1.0, seed: int = 0) -> tuple[LoadedModel, Readout, dict[str, Any]]:
    """(LoadedModel, Readout, info) from a fine-tuned checkpoint, an ntkft run folder, a merged model or a plain
    HF directory. Without a saved head, the readout gets the seeded random scalar head (info['head'] = 'random')."""
    d = checkpoint_dir(path)
    info = read_info(d)
    head_file, info = _pick_head(d, info, head)
    loaded = load_model(str(d), dtype=dtype)
    if info.get("kind"):
        loaded = _with_kind(loaded, info["kind"])
    if head_file is None:
        out_dim = int(info.get("out_dim") or 1)
        readout = Readout.from_loaded(loaded, out_dim=out_dim, sigma=sigma, seed=seed)
        return loaded, readout, {**info, "head": "random"}
    t = read_head(head_file)
    w, b = t["weight"], t["bias"]
    if w.shape[1] != loaded.hidden_size:
        raise ModelError(f"{head_file}: head weight {tuple(w.shape)} does not fit hidden size {loaded.hidden_size} of {d}")
    if info.get("out_dim") is not None and int(info["out_dim"]) != w.shape[0]:
        raise ModelError(f"{head_file}: head has {w.shape[0]} outputs but {INFO} says out_dim {info['out_dim']}")
    readout = Readout.from_loaded(loaded, out_dim=int(w.shape[0]), sigma=sigma, seed=seed)
    with torch.no_grad():
        readout.head.weight.copy_(w.to(readout.head.weight.dtype))
        readout.head.bias.copy_(b.to(readout.head.bias.dtype))
    if info.get("layers") and loaded.num_layers > int(info["layers"]):
        raise ModelError(f"{d}: {INFO} says the backbone has {info['layers']} layers but it holds {loaded.num_layers}")
    return loaded, readout, {**info, "head": str(head_file)}
