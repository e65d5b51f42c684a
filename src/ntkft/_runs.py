"""Run folders: `meta.json` marks a folder as ntkft's and holds the resume key and the files ntkft wrote.

A rerun with the same key resumes; another key, or a folder with files ntkft did not write, is refused in one
line unless `overwrite`. One process writes a folder at a time (an flock on `.ntkft-lock`, which holds the pid).

`overwrite` is a transaction: the new run is built in `OUT/.ntkft-next/` while the old one stays in place and
usable; once the new run is complete, the old run's listed files (at any depth) move to `.ntkft-old/` and the new
ones move in, under a journal (`.ntkft-journal.json`). A kill at any point is repaired by the next `open()`:
before the new marker is in place the swap is rolled back (the old run exactly as it was), after it the old
files are deleted. Files ntkft did not write stay where they are, also inside the run's own folders."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from ._io import atomic_write_text, run_meta, save_tensors, write_json
from .errors import ConfigError

log = logging.getLogger(__name__)

MARKER = "meta.json"
LOCK = ".ntkft-lock"
NEXT = ".ntkft-next"  # the new run while it replaces another
OLD = ".ntkft-old"  # the old run's files during a swap
JOURNAL = ".ntkft-journal.json"


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


def safetensors_ok(path: str | Path) -> bool:
    """True when `path` is a whole safetensors file (its header reads and covers the file)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
        return True
    except Exception:  # SafetensorError, OSError, ...: damaged or missing
        return False


def _key_diff(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


# ---------------------------------------------------------------------- one writer per folder

_HELD: dict[str, list[int]] = {}  # resolved folder -> [fd, holders in this process]


def _lock(folder: Path) -> str:
    """An exclusive flock on `folder/.ntkft-lock` (released when this process dies), re-entrant within a process."""
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return key
    path = folder / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = ""
            for _ in range(20):  # the holder writes its pid right after locking
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
                if pid:
                    break
                time.sleep(0.01)
            os.close(fd)
            raise ConfigError(f"{folder}: another ntkft process (pid {pid or 'unknown'}) is writing this run folder; "
                              "wait for it to end or choose another --out") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino  # not a lock file its holder just removed
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = [fd, 1]
    return key


def _unlock(key: str) -> None:
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] > 0:
        return
    del _HELD[key]
    try:
        os.unlink(Path(key) / LOCK)  # removed while still locked: a waiter re-checks the inode
    except OSError:
        pass
    os.close(held[0])


def release_all() -> None:
    """Release every run-folder lock this process holds (the CLI calls this on the way out)."""
    for key in list(_HELD):
        _HELD[key][1] = 1
        _unlock(key)


# ---------------------------------------------------------------------- files and the swap


def _read_marker(folder: Path) -> dict | None:
    p = folder / MARKER
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    return m if isinstance(m, dict) and m.get("ntkft_run") else None


def _walk(folder: Path, entries: list[str]) -> list[str]:
    """Every file (or link) under the top-level `entries` of `folder`, as relative paths."""
    out: list[str] = []
    for e in entries:
        p = folder / e
        if p.is_dir() and not p.is_symlink():
            out += [str(q.relative_to(folder)) for q in sorted(p.rglob("*")) if not q.is_dir() or q.is_symlink()]
        elif p.exists() or p.is_symlink():
            out.append(e)
    return out


def _own_files(folder: Path, meta: dict) -> list[str]:
    """The files a run in `folder` wrote: its `tree` once complete, else everything under its listed entries."""
    tree = meta.get("tree")
    if isinstance(tree, list):
        return [f for f in tree if isinstance(f, str)]
    return _walk(folder, [f for f in meta.get("files", []) if isinstance(f, str)])


def _move(src: Path, dst: Path) -> None:
    """Rename `src` to `dst` (a no-op when `src` is gone: a repeated step of an interrupted swap)."""
    if not (src.exists() or src.is_symlink()):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def _prune(root: Path, paths: list[str]) -> None:
    """Remove the now empty folders above `paths` (deepest first), never `root` itself."""
    dirs = {root / p for f in paths for p in [os.path.dirname(f)] if p}
    above = {a for d in dirs for a in [d, *d.parents] if root in a.parents}
    for folder in sorted(above, key=lambda p: -len(p.parts)):
        try:
            folder.rmdir()
        except OSError:
            pass


def recover(out: Path) -> None:
    """Finish or undo a swap that a kill interrupted (see the module docstring)."""
    jpath = out / JOURNAL
    if not jpath.is_file():
        return
    try:
        j = json.loads(jpath.read_text())
        old, new, new_id = list(j["old"]), list(j["new"]), j["new_id"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{jpath}: unreadable swap journal; move the folder's files by hand") from None
    stage, trash = out / NEXT, out / OLD
    cur = _read_marker(out)
    if not (stage / MARKER).exists() and cur is not None and cur.get("run_id") == new_id:  # committed: clean up
        shutil.rmtree(trash, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)
        _prune(out, [f for f in old if f not in set(new)])
    else:  # roll back: the new files to the staging folder, the old ones to their places
        for f in [MARKER, *new]:
            if not (stage / f).exists():
                _move(out / f, stage / f)
        _prune(out, new)
        for f in [*old, MARKER]:
            _move(trash / f, out / f)
        shutil.rmtree(trash, ignore_errors=True)
    jpath.unlink()


def _swap(out: Path, old: dict | None, new: dict) -> None:
    """Replace the run in `out` by the complete run in `out/.ntkft-next` (journalled; see `recover`)."""
    stage = out / NEXT
    old_files = _own_files(out, old) if old is not None else []
    new_files = _own_files(stage, new)
    mine = set(old_files)
    for f in new_files:  # a user's file where the new run puts one: refuse before anything moves
        for p in [f, *(str(a) for a in Path(f).parents if str(a) != ".")]:
            if p not in mine and ((out / p).is_symlink() or (out / p).exists() and (p == f or not (out / p).is_dir())):
                raise ConfigError(f"{out / p}: a file ntkft did not write is where the new run puts '{f}'; move it "
                                  f"and rerun (the new run is complete in {stage})")
    write_json(out / JOURNAL, {"old": old_files, "new": new_files, "new_id": new.get("run_id")})
    for f in [MARKER, *old_files]:
        _move(out / f, out / OLD / f)
    for f in new_files:
        _move(stage / f, out / f)
    _move(stage / MARKER, out / MARKER)  # the commit point
    recover(out)


class RunFolder:
    """A run directory owned by ntkft.

    `key` is a JSON-able dict of everything that determines the result (weights and data fingerprints, every
    config field). `open()` locks and claims the folder and says whether it resumes. `out` is the user's folder;
    `root` is where this run writes: `out`, or `out/.ntkft-next` while it replaces another run (until `finish`)."""

    def __init__(self, root: str | Path, kind: str, key: dict, overwrite: bool = False) -> None:
        self.out = Path(root)
        self.root = self.out
        self.kind = kind
        self.key = json.loads(json.dumps(key, sort_keys=True, default=str))
        self.key_digest = digest(self.key)
        self.overwrite = overwrite
        self.files: list[str] = []
        self.meta: dict[str, Any] = {}
        self._foreign: set[str] = set()  # files inside our folders that were there before (a user's)
        self._lock: str | None = None

    # ------------------------------------------------------------------ claiming

    def open(self) -> bool:
        """Lock and claim the folder; True when it holds an unfinished or finished run with the same key."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise ConfigError(f"{out}: output path exists and is not a folder")
        try:
            out.mkdir(parents=True, exist_ok=True)
            if self._lock is None:
                self._lock = _lock(out)
        except OSError as e:
            raise ConfigError(f"{out}: cannot write the run folder here ({e.strerror or e})") from None
        try:
            recover(out)
            return self._claim()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Give up the folder's lock (done by `finish`, and when the process ends)."""
        if self._lock is not None:
            _unlock(self._lock)
            self._lock = None

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: S110  (interpreter shutdown)
            pass

    def _claim(self) -> bool:
        out = self.out
        old = _read_marker(out)
        if old is None:
            entries = [p.name for p in out.iterdir() if not p.name.startswith(".ntkft-")]
            if entries:
                raise ConfigError(f"{out}: folder holds {len(entries)} file(s) ntkft did not write "
                                  f"(e.g. '{sorted(entries)[0]}'); choose an empty or new --out")
            self._start()
            return False
        if self._same(old):
            self._resume(old)
            return True
        if not self.overwrite:
            what = f"another {old.get('kind')} run" if old.get("kind") != self.kind else \
                f"a {self.kind} run with different {', '.join(_key_diff(old.get('key', {}), self.key)) or 'settings'}"
            raise ConfigError(f"{out}: holds {what}; use --overwrite to replace it, or another --out")
        stage = out / NEXT
        self.root = stage
        nxt = _read_marker(stage)
        if nxt is not None and self._same(nxt):
            self._resume(nxt)
            if self.complete:  # built before a kill stopped its swap: swap it in now
                self._commit()
            return True
        shutil.rmtree(stage, ignore_errors=True)  # ntkft's own staging folder of another (unfinished) run
        stage.mkdir()
        self._start()
        return False

    def _same(self, m: dict) -> bool:
        return m.get("kind") == self.kind and m.get("key_digest") == self.key_digest

    def _resume(self, m: dict) -> None:
        self.files = [f for f in m.get("files", []) if isinstance(f, str)]
        self.meta = m
        if isinstance(m.get("tree"), list):
            self._foreign = set(_walk(self.root, self.files)) - set(m["tree"])

    def _start(self) -> None:
        self.files = []
        self.meta = {"ntkft_run": 1, "run_id": uuid.uuid4().hex[:12], "kind": self.kind, "status": "running",
                     "key_digest": self.key_digest, "key": self.key, "files": []}
        self._save_marker()

    def _save_marker(self) -> None:
        self.meta["files"] = sorted(set(self.files))
        write_json(self.root / MARKER, self.meta)

    def finished_json(self, name: str, tensors: list[str] | tuple[str, ...] = ()) -> Any:
        """A complete run's JSON result `name`, or None; a damaged one (unreadable JSON, a listed safetensors file
        `tensors` cut short) marks the run for recomputation (`redo`) and gives None."""
        if not self.complete:
            return None
        try:
            obj = json.loads((self.root / name).read_text())
        except (OSError, ValueError) as e:
            self.redo(f"{self.root / name} is unreadable ({type(e).__name__})")
            return None
        bad = [t for t in tensors if not safetensors_ok(self.root / t)]
        if bad:
            self.redo(f"{self.root / bad[0]} is damaged")
            return None
        return obj

    def redo(self, why: str) -> None:
        """A finished run whose output is damaged (`why`): mark it running again, to be recomputed in place."""
        log.warning("%s: %s; recomputing it", self.root, why)
        self.meta["status"] = "running"
        self.meta.pop("tree", None)
        self._save_marker()

    def _commit(self) -> None:
        _swap(self.out, _read_marker(self.out), self.meta)
        self.root = self.out

    # ------------------------------------------------------------------ writing

    @property
    def complete(self) -> bool:
        """True when this run finished (its results are in the folder)."""
        return self.meta.get("status") == "complete"

    def path(self, name: str) -> Path:
        """`root/name`, recorded as ntkft's own before anything is written there."""
        if name == MARKER or name.startswith(("/", "..", ".ntkft-")):
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
        """Delete one of this run's own files or folders (never anything else, also not a user's file inside)."""
        top = name.split("/")[0]
        if top not in self.files:
            raise ConfigError(f"{self.root / name}: not a file of this run; refusing to delete it")
        p = self.root / name
        mine = [f for f in _walk(self.root, [top]) if f not in self._foreign and (f == name or f.startswith(name + "/"))]
        for f in mine:
            (self.root / f).unlink(missing_ok=True)
        _prune(self.root, mine)
        if p.is_dir():
            try:
                p.rmdir()
            except OSError:
                pass
        if name == top and not p.exists():
            self.files.remove(top)
            self._save_marker()

    def finish(self, **extra: Any) -> dict:
        """Mark the run complete with run metadata (versions, commit, time, peak memory) and `extra`; a run that
        replaces another is swapped in now. Releases the folder's lock."""
        self.meta.update(run_meta(**extra))
        self.meta["status"] = "complete"
        self.meta["tree"] = [f for f in _walk(self.root, sorted(set(self.files))) if f not in self._foreign]
        self._save_marker()
        if self.root != self.out:
            self._commit()
        for stale in self.out.glob(".ntkft-previous-*"):  # parked by older versions of ntkft
            shutil.rmtree(stale, ignore_errors=True)
        self.release()
        return self.meta
