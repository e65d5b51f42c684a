"""Apply task vectors: theta = theta_PT + lam * tau, written tensor by tensor as an HF directory (addition:
tau = sum_i tau_i, eq 25; negation: tau = -tau_t, the corrected eq 23), or streamed into a loaded module.

The written folder is what `transformers` loads (the pretrained model's config, tokenizer and tensor layout, in
safetensors shards of at most `max_shard_bytes`), with each task's own head beside it in `heads/<task>/`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .._io import save_tensors, write_json
from ..errors import ConfigError, ModelError
from ..models.checkpoint import HEAD, HEADS, INFO
from .sources import INDEX, SINGLE, align
from .vector import TaskVector, _Reader, total

DEFAULT_SHARD_BYTES = 2 * 2**30
_SKIP_COPY = {".gitattributes", "README.md", INFO, INDEX}


def merged_tensor(tv: TaskVector, name: str, lam: float, rd: _Reader) -> torch.Tensor:
    """theta_PT + lam * tau at one name; exactly theta_PT where lam = 0 or tau has no support."""
    rd.at(name)
    pt = rd.pt()
    if lam == 0.0 or not tv.base.files.meta[name].floating or not any(name in ck.from_base for _, ck in tv.terms):
        return pt
    tau = tv._tensor(name, rd)
    return pt + (tau if lam == 1.0 else tau * lam)


class ShardWriter:
    """Collects tensors into safetensors shards of at most `max_bytes` (one tensor may exceed it) and writes
    `model.safetensors` or `model-0000i-of-0000N.safetensors` + index, the layout transformers reads."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_SHARD_BYTES) -> None:
        if max_bytes <= 0:
            raise ConfigError(f"max_shard_bytes: must be > 0, got {max_bytes}")
        self.root, self.max_bytes = root, max_bytes
        self.buf: dict[str, torch.Tensor] = {}
        self.size = 0
        self.shards: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        nbytes = t.numel() * t.element_size()
        if self.buf and self.size + nbytes > self.max_bytes:
            self.flush()
        self.buf[name] = t.detach().contiguous()
        self.size += nbytes
        self.total += nbytes

    def flush(self) -> None:
        if not self.buf:
            return
        from safetensors.torch import save_file

        f = self.root / f".shard-{len(self.shards):05d}.safetensors"
        save_file(self.buf, str(f), metadata={"format": "pt"})
        self.shards.append((f, list(self.buf)))
        self.buf, self.size = {}, 0

    def close(self) -> list[str]:
        """Finish the shards; returns the file names written."""
        self.flush()
        if len(self.shards) == 1:
            os.replace(self.shards[0][0], self.root / SINGLE)
            return [SINGLE]
        n = len(self.shards)
        wmap, names = {}, []
        for i, (f, keys) in enumerate(self.shards, 1):
            final = f"model-{i:05d}-of-{n:05d}.safetensors"
            os.replace(f, self.root / final)
            names.append(final)
            wmap.update({k: final for k in keys})
        write_json(self.root / INDEX, {"metadata": {"total_size": self.total}, "weight_map": wmap})
        return names + [INDEX]


def _copy_side_files(src: Path, dst: Path) -> None:
    """Config, tokenizer and other small files of the pretrained folder (not its weights)."""
    for f in src.iterdir():
        if not f.is_file() or f.name.startswith(".") or f.name in _SKIP_COPY:
            continue
        if f.suffix in {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt"}:
            continue
        shutil.copy2(f, dst / f.name)


def safe_name(task: str) -> str:
    """A task label usable as a file or folder name."""
    bad = set('/\\:*?"<>|') | {"\0"}
    name = "".join("_" if ch in bad else ch for ch in task).strip(". ") or "task"
    return name


def write_merged(tv: TaskVector, lam: float, out: str | Path, meta: dict[str, Any] | None = None,
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES, progress: bool = True) -> Path:
    """theta_PT + lam * tau as an HF directory at `out` (atomic: a temporary folder renamed into place), each
    task's head in heads/<task>/ and tensors the pretrained model lacks in heads/<task>/extra.safetensors."""
    if not isinstance(lam, (int, float)) or not torch.isfinite(torch.tensor(float(lam))):
        raise ConfigError(f"lambda: must be a finite number, got {lam!r}")
    lam = float(lam)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / INFO).is_file():
        raise ModelError(f"{out}: exists and is not an ntkft model folder; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".ntkft-tmp-{out.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        writer = ShardWriter(tmp, max_shard_bytes)
        rd = _Reader(tv.base)
        for name in tqdm(tv.base.files.names(), desc=f"writing theta_PT + {lam:g} tau", disable=not progress,
                         unit="tensor"):
            writer.add(name, merged_tensor(tv, name, lam, rd))
        files = writer.close()
        _copy_side_files(tv.base.dir, tmp)
        heads: dict[str, Any] = {}
        for c, ck in tv.terms:
            sub = f"{HEADS}/{safe_name(ck.name)}"
            (tmp / sub).mkdir(parents=True, exist_ok=True)
            entry: dict[str, Any] = {"info": ck.info, "coefficient": c, "source": str(ck.dir)}
            if ck.head is not None:
                save_tensors(tmp / sub / HEAD, {"weight": ck.head.weight, "bias": ck.head.bias})
                entry["file"] = f"{sub}/{HEAD}"
            if ck.extra:
                save_tensors(tmp / sub / "extra.safetensors", {n: ck.files.get(n) for n in ck.extra})
                entry["extra_file"] = f"{sub}/extra.safetensors"
                entry["extra_tensors"] = ck.extra
            write_json(tmp / sub / INFO, ck.info)
            if "file" in entry:
                heads[ck.name] = entry
            else:
                heads.setdefault("_no_head", {})[ck.name] = entry
        kinds = {ck.info.get("kind") for ck in tv.checkpoints if ck.info.get("kind")}
        info = {"base_model": tv.base.spec, "pretrained_dir": str(tv.base.dir), "lambda": lam,
                "task_vector": tv.name, "weights": files, **({"kind": kinds.pop()} if len(kinds) == 1 else {}),
                **(meta or {}),
                "heads": {k: v for k, v in heads.items() if k != "_no_head"},
                "checkpoints_without_head": heads.get("_no_head", {})}
        write_json(tmp / INFO, info)
        if out.exists():
            old = out.with_name(f".ntkft-old-{out.name}-{uuid.uuid4().hex[:8]}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def add(tvs: list[TaskVector], lam: float, out: str | Path, **kw: Any) -> Path:
    """Task addition theta_PT + lam * sum_i tau_i (eq 25) written to `out`."""
    if len(tvs) < 2:
        raise ConfigError(f"finetuned: addition needs at least two task vectors, got {len(tvs)}")
    return write_merged(total(tvs), lam, out, meta={"operation": "add"}, **kw)


def negate(tv: TaskVector, lam: float, out: str | Path, **kw: Any) -> Path:
    """Task negation theta_PT - lam * tau (THEORY.md: the paper's eq 23 misprints theta_FT - tau)."""
    return write_merged(-tv, lam, out, meta={"operation": "negate"}, **kw)


def module_names(module: nn.Module, tv: TaskVector) -> dict[str, str]:
    """Parameter names of `module` -> pretrained tensor names (prefixes aligned), floating parameters only."""
    params = dict(module.named_parameters(remove_duplicate=False))
    m = align(tv.base.files.meta, params)
    if not m:
        raise ModelError(f"the module's parameters share no names with the pretrained files in {tv.base.dir}")
    return m


@torch.no_grad()
def load_into(module: nn.Module, tv: TaskVector, lam: float, names: dict[str, str] | None = None) -> nn.Module:
    """Copy theta_PT + lam * tau into `module`'s parameters, one tensor at a time (no extra model-sized copy)."""
    names = names or module_names(module, tv)
    params = dict(module.named_parameters(remove_duplicate=False))
    rd = _Reader(tv.base)
    for pname, bname in names.items():
        p = params[pname]
        t = merged_tensor(tv, bname, float(lam), rd)
        if tuple(t.shape) != tuple(p.shape):
            raise ModelError(f"tensor '{bname}' has shape {list(t.shape)} but the module's '{pname}' is {list(p.shape)}")
        p.copy_(t.to(p.dtype))
    return module


def merged_info(path: str | Path) -> dict[str, Any]:
    """The ntkft.json of a merged folder."""
    f = Path(path) / INFO
    if not f.is_file():
        raise ModelError(f"{path}: not a merged ntkft model (no {INFO})")
    return json.loads(f.read_text())
