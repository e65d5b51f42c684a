"""Kernel files: ntkft's own format (`kernel.safetensors` with K and everything needed to recompute it) and any
kernel a user has (a safetensors file with `K` and optional `labels`/`outputs`, a `.npy`/`.npz`, a `.pt` tensor).

Every file is checked whole where it is read, and every problem names the file: K square, 2-D and finite
(integer, float16 and bfloat16 K are cast to float64), labels and outputs finite and of length N, class labels
in range of their label map, and a classification file without its label map refused (its labels are class
indices, not 0/1 targets)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from .._io import save_tensors, write_json
from ..errors import KernelError

TENSORS = ["K", "input_ids", "attention_mask", "head.weight", "head.bias", "outputs", "labels", "indices"]
SUFFIXES = (".safetensors", ".npy", ".npz", ".pt", ".pth")


@dataclass
class KernelFile:
    """K (N x N, float64, unnormalised) with its inputs, readout head, f_PT outputs, labels and rows."""

    K: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    head_weight: torch.Tensor
    head_bias: torch.Tensor
    outputs: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, out_dir: str | Path) -> Path:
        """Write kernel.safetensors and meta.json atomically into `out_dir`; returns the kernel path."""
        out = Path(out_dir)
        path = out / "kernel.safetensors"
        tensors = {"K": self.K.double(), "input_ids": self.input_ids, "attention_mask": self.attention_mask,
                   "head.weight": self.head_weight, "head.bias": self.head_bias, "outputs": self.outputs,
                   "labels": self.labels, "indices": self.indices}
        save_tensors(path, tensors, {"meta": json.dumps(self.meta, default=str)})
        write_json(out / "meta.json", self.meta)
        return path


@dataclass
class LoadedKernel:
    """Any kernel file, checked: K as float64 numpy, labels/outputs if the file has them, where it came from."""

    K: NDArray[np.float64]
    source: Path  # the file actually read (kernel.safetensors inside a folder)
    format: str  # ntkft | safetensors | npy | npz | pt
    labels: NDArray[np.float64] | None = None  # regression targets, or class indices (as floats) with label_map
    outputs: NDArray[np.float64] | None = None  # f_PT(X), the warm start
    task_type: str | None = None  # regression | classification | None (unknown: labels are plain targets)
    label_map: list[str] | None = None  # class names in index order (classification)
    meta: dict[str, Any] = field(default_factory=dict)
    precision: float = 2.0 ** -53  # unit roundoff of the dtype K was stored in (0 for integers)

    @property
    def n(self) -> int:
        """N, the number of samples."""
        return int(self.K.shape[0])

    @property
    def name(self) -> str:
        """A display name: the task recorded in the file, else the file (or its folder) name."""
        task = self.meta.get("task")
        if isinstance(task, str) and task:
            return task
        return self.source.parent.name if self.source.name == "kernel.safetensors" else self.source.stem

    def targets(self) -> NDArray[np.float64]:
        """The scalar regression target y: the labels, or +-1 for a two-class file (class 1 of the map is +1)."""
        if self.labels is None:
            raise KernelError(f"{self.source}: has no labels; the stopping rule needs targets y")
        if self.task_type != "classification":
            return self.labels
        assert self.label_map is not None  # checked on load
        if len(self.label_map) != 2:
            raise KernelError(f"{self.source}: {len(self.label_map)} classes; the scalar stopping rule needs a "
                              "regression or a two-class file")
        out: NDArray[np.float64] = 2.0 * self.labels - 1.0
        return out


def _float(t: Any, what: str, where: Path) -> NDArray[np.float64]:
    """A tensor or array as finite float64 numpy (bool and complex refused)."""
    if isinstance(t, torch.Tensor):
        if t.is_complex() or t.dtype == torch.bool:
            raise KernelError(f"{where}: {what} has dtype {t.dtype}; expected real numbers")
        arr = t.detach().cpu().to(torch.float64).numpy()
    else:
        a = np.asarray(t)
        if a.dtype.kind not in "fiu":
            raise KernelError(f"{where}: {what} has dtype {a.dtype}; expected real numbers")
        arr = a.astype(np.float64)
    if not np.isfinite(arr).all():
        raise KernelError(f"{where}: {what} contains NaN or inf")
    out: NDArray[np.float64] = arr
    return out


def _precision(t: Any) -> float:
    """Unit roundoff of a tensor's or array's dtype: eigenvalues of K/N below about this * lambda_1 are noise."""
    if isinstance(t, torch.Tensor):
        return 0.0 if not t.is_floating_point() else float(torch.finfo(t.dtype).eps) / 2
    a = np.asarray(t)
    return 0.0 if a.dtype.kind in "iu" else float(np.finfo(a.dtype).eps) / 2


def _is_int(t: Any) -> bool:
    if isinstance(t, torch.Tensor):
        return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool
    return np.asarray(t).dtype.kind in "iu"


def _check_matrix(k: NDArray[np.float64], where: Path) -> NDArray[np.float64]:
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise KernelError(f"{where}: K must be a square matrix, has shape {tuple(k.shape)}")
    if k.shape[0] == 0:
        raise KernelError(f"{where}: K is empty")
    scale = float(np.abs(k).max()) or 1.0
    asym = float(np.abs(k - k.T).max()) / scale
    if asym > 1e-6:
        raise KernelError(f"{where}: K is not symmetric (max |K - K^T| / max |K| = {asym:.2e})")
    return k


def _vector(t: Any, what: str, n: int, where: Path) -> NDArray[np.float64]:
    v = _float(t, what, where)
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 1 or v.shape[0] != n:
        raise KernelError(f"{where}: {what} has shape {tuple(v.shape)}, expected ({n},) to match K")
    return v


def _meta_targets(meta: dict[str, Any], labels_raw: Any, where: Path) -> tuple[str | None, list[str] | None]:
    """task_type and label_map from the file's meta, checked against the labels."""
    task_type = meta.get("task_type")
    if task_type not in (None, "regression", "classification"):
        raise KernelError(f"{where}: meta task_type must be 'regression' or 'classification', got {task_type!r}")
    label_map = meta.get("label_map")
    if task_type == "classification":
        if labels_raw is None:
            raise KernelError(f"{where}: a classification file without labels")
        if not isinstance(label_map, list) or len(label_map) < 2:
            raise KernelError(f"{where}: classification kernel file without its label map (meta 'label_map', the "
                              "class names in index order); its labels are class indices, not 0/1 targets")
        return task_type, [str(x) for x in label_map]
    if labels_raw is not None and task_type is None and _is_int(labels_raw):
        raise KernelError(f"{where}: labels are integers but the file does not say whether they are classes; store "
                          "float targets, or meta {'task_type': 'classification', 'label_map': [...]}")
    return task_type, None


def _build(k_raw: Any, where: Path, fmt: str, labels_raw: Any = None, outputs_raw: Any = None,
           meta: dict[str, Any] | None = None) -> LoadedKernel:
    meta = meta or {}
    k = _check_matrix(_float(k_raw, "K", where), where)
    n = k.shape[0]
    task_type, label_map = _meta_targets(meta, labels_raw, where)
    labels = None if labels_raw is None else _vector(labels_raw, "labels", n, where)
    if labels is not None and label_map is not None:
        bad = labels[(labels != np.round(labels)) | (labels < 0) | (labels >= len(label_map))]
        if len(bad):
            raise KernelError(f"{where}: label {bad[0]:g} is not a class index of the label map "
                              f"({len(label_map)} classes: {', '.join(label_map)})")
    outputs = None if outputs_raw is None else _vector(outputs_raw, "outputs", n, where)
    return LoadedKernel(k, where, fmt, labels, outputs, task_type, label_map, meta, _precision(k_raw))


def _meta_json(text: str | None, where: Path) -> dict[str, Any]:
    if not text:
        return {}
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise KernelError(f"{where}: metadata 'meta' is not valid JSON ({e.msg})") from None
    if not isinstance(meta, dict):
        raise KernelError(f"{where}: metadata 'meta' must be a JSON object")
    return meta


def _read_safetensors(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(p, framework="pt") as fh:
            tensors = {name: fh.get_tensor(name) for name in fh.keys() if name in TENSORS}
            meta = _meta_json((fh.metadata() or {}).get("meta"), p)
    except (SafetensorError, OSError, ValueError) as e:
        raise KernelError(f"{p}: cannot read safetensors ({str(e).splitlines()[0]})") from None
    return tensors, meta


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        inner = p / "kernel.safetensors"
        if not inner.is_file():
            raise KernelError(f"{p}: folder holds no kernel.safetensors (kernel file not found)")
        return inner
    if not p.exists():
        raise KernelError(f"{p}: kernel file not found")
    if not p.is_file():
        raise KernelError(f"{p}: not a file")
    if p.suffix.lower() not in SUFFIXES:
        raise KernelError(f"{p}: unsupported kernel file type '{p.suffix}' (expected a kernel folder, "
                          ".safetensors, .npy, .npz or .pt)")
    return p


def load_kernel(path: str | Path) -> LoadedKernel:
    """Any kernel a user has: an ntkft kernel folder or file, a safetensors file with `K` (optional `labels`,
    `outputs` and a JSON `meta` metadata entry), a `.npy` matrix, a `.npz` with `K` (+ `labels`, `outputs`), or a
    `.pt` holding one tensor or a dict with `K` (read with weights_only=True)."""
    p = _resolve(path)
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        tensors, meta = _read_safetensors(p)
        if "K" not in tensors:
            raise KernelError(f"{p}: safetensors file has no tensor named 'K'")
        fmt = "ntkft" if all(name in tensors for name in TENSORS) else "safetensors"
        return _build(tensors["K"], p, fmt, tensors.get("labels"), tensors.get("outputs"), meta)
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise KernelError(f"{p}: cannot read .npy ({str(e).splitlines()[0]})") from None
        return _build(arr, p, "npy")
    if suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                parts = {name: z[name] for name in ("K", "labels", "outputs") if name in z.files}
        except (ValueError, OSError, EOFError) as e:
            raise KernelError(f"{p}: cannot read .npz ({str(e).splitlines()[0]})") from None
        if "K" not in parts:
            raise KernelError(f"{p}: .npz file has no array named 'K'")
        return _build(parts["K"], p, "npz", parts.get("labels"), parts.get("outputs"))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad or unsafe file
        raise KernelError(f"{p}: cannot read with torch.load(weights_only=True) ({str(e).splitlines()[0][:200]})") \
            from None
    if isinstance(obj, dict):
        if not isinstance(obj.get("K"), torch.Tensor):
            raise KernelError(f"{p}: a .pt dict must hold a tensor 'K'")
        return _build(obj["K"], p, "pt", obj.get("labels"), obj.get("outputs"))
    if not isinstance(obj, torch.Tensor):
        raise KernelError(f"{p}: .pt file holds a {type(obj).__name__}, not a tensor")
    return _build(obj, p, "pt")


def load_kernel_file(path: str | Path) -> KernelFile:
    """Read and validate an ntkft kernel file (a folder holding kernel.safetensors, or the file itself)."""
    p = _resolve(path)
    if p.suffix.lower() != ".safetensors":
        raise KernelError(f"{p}: not an ntkft kernel file (expected kernel.safetensors)")
    tensors, meta = _read_safetensors(p)
    missing = [name for name in TENSORS if name not in tensors]
    if missing:
        raise KernelError(f"{p}: not an ntkft kernel file (missing {', '.join(missing)})")
    lk = _build(tensors["K"], p, "ntkft", tensors["labels"], tensors["outputs"], meta)
    n = lk.n
    for name in ("input_ids", "attention_mask", "indices"):
        if tensors[name].shape[0] != n:
            raise KernelError(f"{p}: {name} has {tensors[name].shape[0]} rows, K has {n}")
    return KernelFile(torch.from_numpy(lk.K), tensors["input_ids"], tensors["attention_mask"], tensors["head.weight"],
                      tensors["head.bias"], tensors["outputs"], tensors["labels"], tensors["indices"], meta)
