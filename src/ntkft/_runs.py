"""Run folders: `meta.json` marks a folder as ntkft's and holds the resume key and the files ntkft wrote.

A rerun with the same key resumes; another key, or a folder with files ntkft did not write, is refused
in one line unless `overwrite`. ntkft deletes only files it lists as its own, and an overwritten run's
files are parked in a hidden folder until the new run is complete, then removed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from ._io import atomic_write_text, run_meta, save_tensors, write_json
from .errors import ConfigError

MARKER = "meta.json"


def digest(obj: Any) -> str:
    """sha256 of a JSON-able object with sorted keys (the resume key's fingerprint)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: str | Path, block: int = 1 << 20) -> str:
    """sha256 of a file's contents."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def _key_diff(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


class RunFolder:
    """A run directory owned by ntkft.

    `key` is a JSON-able dict of everything that determines the result (weights and data
    fingerprints, every config field). `open()` claims the folder and says whether it resumes."""

    def __init__(self, root: str | Path, kind: str, key: dict, overwrite: bool = False) -> None:
        self.root = Path(root)
        self.kind = kind
        self.key = json.loads(json.dumps(key, sort_keys=True, default=str))
        self.key_digest = digest(self.key)
        self.overwrite = overwrite
        self.files: list[str] = []
        self.meta: dict[str, Any] = {}
        self._parked: Path | None = None

    # ------------------------------------------------------------------ claiming

    def open(self) -> bool:
        """Claim the folder; True when it holds an unfinished or finished run with the same key."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise ConfigError(f"{root}: output path exists and is not a folder")
        root.mkdir(parents=True, exist_ok=True)
        old = self._read_marker()
        entries = [p.name for p in root.iterdir() if not p.name.startswith(".ntkft-")]
        if old is None:
            if entries:
                raise ConfigError(f"{root}: folder holds {len(entries)} file(s) ntkft did not write "
                                  f"(e.g. '{sorted(entries)[0]}'); choose an empty or new --out")
            self._start()
            return False
        if old.get("kind") == self.kind and old.get("key_digest") == self.key_digest:
            self.files = list(old.get("files", []))
            self.meta = old
            return True
        if not self.overwrite:
            what = f"another {old.get('kind')} run" if old.get("kind") != self.kind else \
                f"a {self.kind} run with different {', '.join(_key_diff(old.get('key', {}), self.key)) or 'settings'}"
            raise ConfigError(f"{root}: holds {what}; use --overwrite to replace it, or another --out")
        self._park(old)
        self._start()
        return False

    def _read_marker(self) -> dict | None:
        p = self.root / MARKER
        if not p.is_file():
            return None
        try:
            m = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return None
        return m if isinstance(m, dict) and m.get("ntkft_run") else None

    def _park(self, old: dict) -> None:
        """Move the old run's own files aside; they are removed only when the new run completes."""
        park = self.root / f".ntkft-previous-{old.get('run_id', 'old')}"
        park.mkdir(exist_ok=True)
        for name in list(old.get("files", [])) + [MARKER]:
            src = self.root / name
            if src.exists() or src.is_symlink():
                dst = park / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                src.replace(dst)
        self._parked = park

    def _start(self) -> None:
        self.files = []
        self.meta = {"ntkft_run": 1, "run_id": uuid.uuid4().hex[:12], "kind": self.kind, "status": "running",
                     "key_digest": self.key_digest, "key": self.key, "files": []}
        self._save_marker()

    def _save_marker(self) -> None:
        self.meta["files"] = sorted(set(self.files))
        write_json(self.root / MARKER, self.meta)

    # ------------------------------------------------------------------ writing

    @property
    def complete(self) -> bool:
        """True when this run finished (its results are in the folder)."""
        return self.meta.get("status") == "complete"

    def path(self, name: str) -> Path:
        """`root/name`, recorded as ntkft's own before anything is written there."""
        if name == MARKER or name.startswith(("/", "..")):
            raise ConfigError(f"run file name '{name}' is reserved or outside the run folder")
        top = name.split("/")[0]
        if top not in self.files:
            target = self.root / top
            if target.exists() and top not in self.files:
                raise ConfigError(f"{target}: exists and was not written by this run; refusing to replace it")
            self.files.append(top)
            self._save_marker()
        return self.root / name

    def write_json(self, name: str, obj: Any) -> Path:
        p = self.path(name)
        write_json(p, obj)
        return p

    def write_text(self, name: str, text: str) -> Path:
        p = self.path(name)
        atomic_write_text(p, text)
        return p

    def save_tensors(self, name: str, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
        p = self.path(name)
        save_tensors(p, tensors, metadata)
        return p

    def remove(self, name: str) -> None:
        """Delete one of this run's own files or folders (never anything else)."""
        top = name.split("/")[0]
        if top not in self.files:
            raise ConfigError(f"{self.root / name}: not a file of this run; refusing to delete it")
        p = self.root / name
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
        if name == top:
            self.files.remove(top)
            self._save_marker()

    def finish(self, **extra: Any) -> dict:
        """Mark the run complete with run metadata (versions, commit, time, peak memory) and `extra`."""
        self.meta.update(run_meta(**extra))
        self.meta["status"] = "complete"
        self._save_marker()
        if self._parked is not None:
            shutil.rmtree(self._parked, ignore_errors=True)
            self._parked = None
        for stale in self.root.glob(".ntkft-previous-*"):
            shutil.rmtree(stale, ignore_errors=True)
        return self.meta
