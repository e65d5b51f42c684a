"""Where finished work units live: in memory, or in a checkpoint folder that a rerun resumes from.

A `Checkpoint` lists every file it writes in its manifest before writing it, and only ever deletes
files of that list: a user's own files in the folder are never touched, and a file of the same name
that it did not write is refused rather than replaced. The `Accumulator` is K (float64) plus the ids
of the work units already summed into it, snapshotted to the store so a killed run resumes."""

from __future__ import annotations

import json
import logging
import struct
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from .._io import atomic_file, write_json
from ..errors import KernelError

log = logging.getLogger(__name__)

MANIFEST = "ntkft-checkpoint.json"


class Store(Protocol):
    """Named groups of tensors (one per work unit), with a JSON-able dict of metadata each.

    `meta["alias"]`, if present, maps further names to stored tensors (one tensor under several names);
    `get(name, keys)` returns the requested names that exist, aliases resolved."""

    def has(self, name: str) -> bool: ...

    def put(self, name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None,
            durable: bool = True) -> None: ...

    def get(self, name: str, keys: list[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...

    def remove(self, name: str) -> None: ...

    def clear(self) -> None: ...

    def nbytes(self) -> int: ...


class MemoryStore:
    """A Store in this process's memory (nothing survives a kill)."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}

    def has(self, name: str) -> bool:
        return name in self.items

    def put(self, name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None, durable: bool = True) -> None:
        self.items[name] = (tensors, dict(meta or {}))

    def get(self, name: str, keys: list[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = self.items[name]
        if keys is None:
            return tensors, meta
        alias = meta.get("alias", {})
        return {k: tensors[alias.get(k, k)] for k in keys if alias.get(k, k) in tensors}, meta

    def remove(self, name: str) -> None:
        self.items.pop(name, None)

    def clear(self) -> None:
        self.items.clear()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for ts, _ in self.items.values() for t in ts.values())


_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def _unshared(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Contiguous host tensors to write, and aliases: a tensor that is another one (the same memory, shape, strides
    and dtype: BERT's position and token-type embeddings receive one output gradient) is stored once under its
    first name."""
    flat: dict[str, torch.Tensor] = {}
    alias: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for k, v in tensors.items():
        t = v.detach().cpu().contiguous()
        key = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and key in seen:
            alias[k] = seen[key]
            continue
        if t.numel():
            seen[key] = k
        flat[k] = t
    return flat, alias


def write_safetensors(path: Path, tmp: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                      durable: bool) -> None:
    """The safetensors format written straight from each tensor's memory, via `tmp` and an atomic rename
    (`atomic_file`). safetensors' own writer first copies every tensor to bytes: ~6x slower, and a second copy
    while it writes; it still writes what this cannot (a big-endian host, dtypes beyond the usual ones)."""
    try:
        with atomic_file(path, tmp, durable) as fh:
            if sys.byteorder == "little" and all(t.dtype in _DTYPES and t.is_contiguous() for t in tensors.values()):
                _write_raw(fh, tensors, metadata)
            else:
                from safetensors.torch import save

                fh.write(save(tensors, metadata=metadata))
    except (KeyError, ValueError, TypeError) as e:  # what safetensors raises for a dtype it cannot store
        raise KernelError(f"{path}: cannot store this unit ({e})") from None


def _write_raw(fh: Any, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Header (8-byte little-endian length, JSON padded with spaces to 8 bytes), then each tensor's bytes."""
    header: dict[str, Any] = {"__metadata__": metadata}
    off = 0
    for k, t in tensors.items():
        n = t.numel() * t.element_size()
        header[k] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + n]}
        off += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    fh.write(struct.pack("<Q", len(head)))
    fh.write(head)
    for t in tensors.values():
        if t.numel():
            fh.write(t.reshape(-1).view(torch.uint8).numpy().data)


class Checkpoint:
    """A Store in a folder, tied to one computation by `key`: a different key never reuses (or deletes) anything
    but the files this class listed in the folder's manifest."""

    def __init__(self, root: str | Path, key: dict[str, Any]) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise KernelError(f"{self.root}: checkpoint path exists and is not a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        self.key = json.loads(json.dumps(key, sort_keys=True, default=str))
        old = self._read_manifest()
        self.files: list[str] = []
        if old is not None and old.get("key") == self.key:
            self.files = [f for f in old.get("files", []) if isinstance(f, str)]
        elif old is not None:
            self.files = [f for f in old.get("files", []) if isinstance(f, str)]
            log.warning("checkpoint %s belonged to another computation; removing its %d file(s)", self.root,
                        len(self.files))
            self.clear(keep_folder=True)
        self._save_manifest()

    # ------------------------------------------------------------------ manifest

    def _read_manifest(self) -> dict[str, Any] | None:
        p = self.root / MANIFEST
        if not p.is_file():
            return None
        try:
            m = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return m if isinstance(m, dict) and m.get("ntkft_checkpoint") == 1 else None

    def _save_manifest(self) -> None:
        write_json(self.root / MANIFEST, {"ntkft_checkpoint": 1, "key": self.key, "files": sorted(set(self.files))})

    def _file(self, name: str) -> str:
        if not name or "/" in name or name.startswith("."):
            raise KernelError(f"checkpoint unit name '{name}' is not a plain file name")
        return f"{name}.safetensors"

    def _claim(self, fname: str) -> Path:
        """Record `fname` (and its temporary twin) as ours before anything is written there."""
        path = self.root / fname
        if fname not in self.files:
            if path.exists() or (self.root / f".{fname}.tmp").exists():
                raise KernelError(f"{path}: exists and was not written by this checkpoint; refusing to replace it")
            self.files += [fname, f".{fname}.tmp"]
            self._save_manifest()
        return path

    # ------------------------------------------------------------------ the Store interface

    def has(self, name: str) -> bool:
        fname = self._file(name)
        return fname in self.files and (self.root / fname).is_file()

    def put(self, name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None, durable: bool = True) -> None:
        """Write a unit's tensors atomically (temp file + rename); `durable=False` skips the fsync (scratch data)."""
        fname = self._file(name)
        path = self._claim(fname)
        flat, alias = _unshared(tensors)
        meta = {**(meta or {}), "alias": {**(meta or {}).get("alias", {}), **alias}} if alias else (meta or {})
        md = {"meta": json.dumps(meta, default=str)}
        tmp = self.root / f".{fname}.tmp"  # the claimed twin: a kill mid-write leaves only files the manifest lists
        write_safetensors(path, tmp, flat, md, durable)

    def get(self, name: str, keys: list[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The unit's tensors (copies: the file is unmapped again, so reading back adds nothing to this process's
        resident memory beyond what it keeps)."""
        from safetensors import SafetensorError, safe_open

        path = self.root / self._file(name)
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {}).get("meta", "{}"))
                names = set(fh.keys())
                if keys is None:
                    return {k: fh.get_tensor(k) for k in names}, meta
                alias = meta.get("alias", {})
                read: dict[str, torch.Tensor] = {}  # names aliasing one stored tensor share one copy (q, k, v's A)
                for k in keys:
                    src = alias.get(k, k)
                    if src in names and src not in read:
                        read[src] = fh.get_tensor(src)
                return {k: read[alias.get(k, k)] for k in keys if alias.get(k, k) in read}, meta
        except (SafetensorError, OSError, ValueError) as e:
            raise KernelError(f"{path}: unreadable checkpoint unit ({e}); delete it to recompute") from None

    def remove(self, name: str) -> None:
        fname = self._file(name)
        if fname in self.files:
            (self.root / fname).unlink(missing_ok=True)
            (self.root / f".{fname}.tmp").unlink(missing_ok=True)
            self.files = [f for f in self.files if f not in (fname, f".{fname}.tmp")]
            self._save_manifest()

    def clear(self, keep_folder: bool = False) -> None:
        """Delete every file this checkpoint listed, then its manifest and the folder if nothing else is left."""
        for f in self.files:
            (self.root / f).unlink(missing_ok=True)
        self.files = []
        if keep_folder:
            return
        (self.root / MANIFEST).unlink(missing_ok=True)
        try:
            self.root.rmdir()  # only succeeds when the folder is empty: other files stay, and so does it
        except OSError:
            pass

    def nbytes(self) -> int:
        return sum((self.root / f).stat().st_size for f in self.files if (self.root / f).is_file())


class Accumulator:
    """K in the plan's sorted order (float64) and the ids of the contribution units summed into it.

    `save()` snapshots both to the store as one unit (at most every `every` seconds unless forced)."""

    NAME = "accumulator"

    def __init__(self, rows: int, cols: int, store: Store, device: torch.device | str = "cpu",
                 name: str = NAME, every: float = 0.0) -> None:
        self.store, self.name, self.every = store, name, every
        self.device = torch.device(device)
        self.done: list[str] = []
        if store.has(name):
            t, meta = store.get(name)
            k = t.get("K")
            if k is not None and tuple(k.shape) == (rows, cols):
                self.k = k.to(self.device, torch.float64)
                self.done = list(meta.get("done", []))
            else:
                self.k = torch.zeros(rows, cols, dtype=torch.float64, device=self.device)
        else:
            self.k = torch.zeros(rows, cols, dtype=torch.float64, device=self.device)
        self._saved_at = time.monotonic()
        self._dirty = False

    def has(self, unit_id: str) -> bool:
        return unit_id in self.done

    def add(self, unit_id: str, row0: int, col0: int, block: torch.Tensor) -> None:
        """K[row0:, col0:] += block (for one unit, once)."""
        if unit_id in self.done:
            return
        r, c = block.shape
        self.k[row0:row0 + r, col0:col0 + c] += block.to(self.device, torch.float64)
        self.done.append(unit_id)
        self._dirty = True

    def save(self, force: bool = False) -> None:
        if not self._dirty or (not force and time.monotonic() - self._saved_at < self.every):
            return
        self.store.put(self.name, {"K": self.k}, {"done": self.done})
        self._saved_at = time.monotonic()
        self._dirty = False
