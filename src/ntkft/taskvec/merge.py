"""Apply task vectors: theta = theta_PT + lam * tau, written tensor by tensor as an HF directory (addition:
tau = sum_i tau_i, eq 25; negation: tau = -tau_t, the corrected eq 23), or streamed into a loaded module.

The written folder is what `transformers` loads (the pretrained model's config, tokenizer and tensor layout, in
safetensors shards of at most `max_shard_bytes`), with each task's own head beside it in `heads/<task>/`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn
from tqdm.auto import tqdm

from .._io import save_tensors, write_json
from ..errors import ConfigError, ModelError
from ..models.checkpoint import HEAD, HEADS, INFO
from .sources import INDEX, SAFETENSORS_DTYPES, SINGLE, align
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


_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}  # the safetensors code of each dtype ntkft reads


class ShardWriter:
    """Streams tensors straight into safetensors shards of at most `max_bytes` (one tensor may exceed it), laid
    out up front from `layout` (name, shape, dtype in write order), so nothing but the tensor in hand is held:
    `model.safetensors` or `model-0000i-of-0000N.safetensors` + index, the layout transformers reads."""

    def __init__(self, root: Path, layout: list[tuple[str, tuple[int, ...], torch.dtype]],
                 max_bytes: int = DEFAULT_SHARD_BYTES) -> None:
        if max_bytes <= 0:
            raise ConfigError(f"max_shard_bytes: must be > 0, got {max_bytes}")
        self.root = root
        self.shards: list[list[tuple[str, tuple[int, ...], torch.dtype, int]]] = [[]]
        size = 0
        for name, shape, dtype in layout:
            if dtype not in _CODES:
                raise ModelError(f"tensor '{name}': dtype {dtype} cannot be written as safetensors")
            nbytes = math.prod(shape) * dtype.itemsize
            if self.shards[-1] and size + nbytes > max_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append((name, tuple(shape), dtype, nbytes))
            size += nbytes
        self.total = sum(e[3] for sh in self.shards for e in sh)
        n = len(self.shards)
        self.files = [SINGLE] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        self.order = [(i, j) for i, sh in enumerate(self.shards) for j in range(len(sh))]
        self.pos = 0
        self.handle: BinaryIO | None = None

    def _open(self, i: int) -> BinaryIO:
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        off = 0
        for name, shape, dtype, nbytes in self.shards[i]:
            header[name] = {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [off, off + nbytes]}
            off += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        f = open(self.root / self.files[i], "wb")
        f.write(struct.pack("<Q", len(raw)) + raw)
        return f

    def add(self, name: str, t: torch.Tensor) -> None:
        """Write the next tensor of the layout (names must arrive in layout order)."""
        if self.pos >= len(self.order):
            raise ModelError(f"tensor '{name}': not in the planned layout")
        i, j = self.order[self.pos]
        want, shape, dtype, nbytes = self.shards[i][j]
        if name != want or tuple(t.shape) != shape or t.dtype != dtype:
            raise ModelError(f"tensor '{name}' {tuple(t.shape)} {t.dtype}: the layout expects '{want}' {shape} {dtype}")
        if j == 0:
            if self.handle is not None:
                self.handle.close()
            self.handle = self._open(i)
        assert self.handle is not None
        flat = t.detach().cpu().contiguous().reshape(-1)
        if nbytes:
            self.handle.write(flat.view(torch.uint8).numpy().data)
        self.pos += 1

    def close(self) -> list[str]:
        """Finish the shards (every tensor of the layout must have been added); returns the file names written."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        if self.pos != len(self.order):
            raise ModelError(f"{self.root}: {len(self.order) - self.pos} planned tensors were never written")
        if len(self.files) == 1:
            return list(self.files)
        wmap = {name: self.files[i] for i, sh in enumerate(self.shards) for name, *_ in sh}
        write_json(self.root / INDEX, {"metadata": {"total_size": self.total}, "weight_map": wmap})
        return self.files + [INDEX]


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
        names = tv.base.files.names()
        tm = tv.base.files.meta
        writer = ShardWriter(tmp, [(n, tm[n].shape, tm[n].dtype) for n in names], max_shard_bytes)
        rd = _Reader(tv.base)
        for name in tqdm(names, desc=f"writing theta_PT + {lam:g} tau", disable=not progress,
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
    """Task negation theta_PT - lam * tau (docs/theory.md: the paper's eq 23 misprints theta_FT - tau)."""
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
