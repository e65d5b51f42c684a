"""Atomic file writes and run metadata (versions, commit, peak memory) shared by every run directory."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


@contextmanager
def atomic_file(path: str | Path, tmp: str | Path | None = None, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` by an atomic rename when the block ends without error (fsynced first unless
    `durable` is False); on error the temp file goes. `tmp`: a fixed temp name (one a manifest already lists, so a
    kill mid-write leaves nothing unaccounted for); default a fresh one in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp is None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    else:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, tmp: str | Path | None = None) -> None:
    """Write `data` to `path` via a temp file in the same folder, an fsync and an atomic rename."""
    with atomic_file(path, tmp) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Atomic JSON write with stable formatting."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Atomically save a dict of tensors as safetensors."""
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata))


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB. Linux's VmHWM is this program's own; ru_maxrss (the fallback)
    also counts the parent's peak before exec, so a child of a big process would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)


def git_commit() -> str | None:
    """Commit of the ntkft checkout this code runs from, if it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def versions() -> dict[str, str]:
    """Versions of the packages that decide numerical results."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "machine": platform.machine()}
    for pkg in ("ntkft", "torch", "transformers", "numpy", "scipy", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def run_meta(**extra: Any) -> dict[str, Any]:
    """Metadata block written as meta.json next to every result."""
    import datetime

    meta = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "versions": versions(),
        "git_commit": git_commit(),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    meta.update(extra)
    return meta
