"""Checkpoints read tensor by tensor: safetensors files (one file or shards listed in model.safetensors.index.json),
the pretrained model a spec names, fine-tuned checkpoints with their task head, and name alignment between them.

Only headers are read up front; `get(name)` opens the file that holds one tensor, reads that tensor and closes
the file again, so no more than the tensors in use are ever resident (models larger than RAM stream).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from ..models import ALIASES, cache_dir, fingerprint, load_model
from ..models.checkpoint import HEAD, checkpoint_dir, read_head, read_info

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}
SAFETENSORS_DTYPES.update({code: getattr(torch, name) for code, name in
                           (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")) if hasattr(torch, name)})


@dataclass(frozen=True)
class TensorMeta:
    """Where one tensor lives and what it is."""

    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()

    @property
    def floating(self) -> bool:
        return self.dtype.is_floating_point


def _dtype(code: str, file: Path, name: str) -> torch.dtype:
    if code in SAFETENSORS_DTYPES:
        return SAFETENSORS_DTYPES[code]
    raise ModelError(f"{file}: tensor '{name}' has dtype {code}, which ntkft cannot read")


class WeightFiles:
    """The safetensors weights of one HF directory, indexed by tensor name, read one tensor at a time."""

    def __init__(self, root: str | Path) -> None:
        from safetensors import safe_open

        self.root = Path(root)
        files = self._files()
        self.meta: dict[str, TensorMeta] = {}
        for f in files:
            try:
                with safe_open(str(f), framework="pt") as h:
                    for name in h.keys():
                        s = h.get_slice(name)
                        self.meta[name] = TensorMeta(f, tuple(int(x) for x in s.get_shape()), _dtype(s.get_dtype(), f, name))
            except ModelError:
                raise
            except Exception as e:  # safetensors raises its own types for truncated or corrupt files
                raise ModelError(f"{f}: not a readable safetensors file ({type(e).__name__}: {str(e).splitlines()[0]})") from None
        if not self.meta:
            raise ModelError(f"{self.root}: the weight files hold no tensors")

    def _files(self) -> list[Path]:
        idx = self.root / INDEX
        if idx.is_file():
            try:
                wmap = json.loads(idx.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
                raise ModelError(f"{idx}: not a valid safetensors index ({type(e).__name__}: {e})") from None
            files = [self.root / f for f in dict.fromkeys(wmap.values())]
            for f in files:
                if not f.is_file():
                    raise ModelError(f"{idx}: lists shard '{f.name}', which is missing")
            return files
        if (self.root / SINGLE).is_file():
            return [self.root / SINGLE]
        shards = sorted(self.root.glob("*.safetensors"))
        shards = [s for s in shards if s.name != HEAD]
        if shards:
            return shards
        if any(self.root.glob("*.bin")):
            raise ModelError(f"{self.root}: has only PyTorch .bin weights; task vectors stream safetensors "
                             "(re-save it with save_pretrained(safe_serialization=True))")
        raise ModelError(f"{self.root}: no weight file (model.safetensors or {INDEX})")

    def names(self) -> list[str]:
        """Tensor names in file order."""
        return list(self.meta)

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read from its file (the file is closed again afterwards)."""
        from safetensors import safe_open

        m = self.meta.get(name)
        if m is None:
            raise ModelError(f"{self.root}: has no tensor '{name}'")
        with safe_open(str(m.file), framework="pt") as h:
            return h.get_tensor(name)

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.meta.values())

    def config(self) -> dict[str, Any]:
        """The directory's config.json ({} if absent)."""
        try:
            return json.loads((self.root / "config.json").read_text())
        except (OSError, ValueError):
            return {}


# ---------------------------------------------------------------- name alignment


def _first(name: str) -> str:
    return name.split(".", 1)[0]


def align(base: Iterable[str], names: Iterable[str]) -> dict[str, str]:
    """Map `names` onto `base` names: identity, or one leading module prefix added or removed
    (`layers.0.x` in a backbone vs `model.layers.0.x` in a causal-LM file). Unmatched names are left out."""
    base, names = set(base), list(names)
    options: list[tuple[str, str]] = [("", "")]
    options += [("", p + ".") for p in Counter(_first(b) for b in base if "." in b)]  # add a prefix
    options += [(p + ".", "") for p in Counter(_first(n) for n in names if "." in n)]  # strip a prefix

    def mapped(strip: str, add: str) -> dict[str, str]:
        out = {}
        for n in names:
            if strip and not n.startswith(strip):
                continue
            m = add + n[len(strip):]
            if m in base:
                out[n] = m
        return out

    best = max((mapped(s, a) for s, a in options), key=len)
    return best


# ---------------------------------------------------------------- the pretrained model and fine-tuned checkpoints


def _config_kind(cfg: dict[str, Any]) -> str:
    return str(cfg.get("model_type", "?"))


def _materialise(spec: str) -> Path:
    """A random-init test alias written once into the cache as an HF directory (the same seed-0 weights
    `load_model(spec)` gives, which is what `ntkft finetune` started from)."""
    loaded = load_model(spec)
    out = cache_dir() / "models" / f"{spec}-{fingerprint(loaded.backbone)[:16]}"
    if not (out / "config.json").is_file():
        import os
        import shutil
        import tempfile

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
        try:
            backbone: Any = loaded.backbone
            tok: Any = loaded.tokenizer
            backbone.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            if not (out / "config.json").is_file():
                shutil.rmtree(out, ignore_errors=True)
                os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def pretrained_dir(spec: str) -> Path:
    """The HF directory of a pretrained model spec: alias, HF directory, .gguf file (converted once) or hub id."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelError("pretrained: must name a model (alias, hub id, HF directory or .gguf file)")
    alias = ALIASES.get(spec)
    if alias is not None and alias.source == "tiny":
        return _materialise(spec)
    p = Path(spec).expanduser()
    if alias is None and p.is_dir():
        return checkpoint_dir(p)
    if alias is None and p.suffix == ".gguf" and p.is_file():
        from ..models.zoo import gguf_to_hf_dir

        return gguf_to_hf_dir(p.resolve(), "gguf-" + p.stem)
    if alias is not None and alias.source != "hub":
        path = load_model(spec).path
        if path and Path(path).is_dir():
            return Path(path)
    hub_id = alias.where if alias is not None else spec
    if alias is None and not (spec.count("/") == 1 and not spec.startswith((".", "/", "~"))):
        raise ModelError(f"{spec}: no such pretrained model (not an alias, an HF directory, a .gguf file or a hub id)")
    return _hub_dir(hub_id)


def _hub_dir(hub_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelError(f"{hub_id}: reading a hub model needs `pip install huggingface_hub`") from None
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    try:
        return Path(snapshot_download(hub_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # not cached: fetch it (the user named a hub model)
        try:
            return Path(snapshot_download(hub_id, allow_patterns=patterns))
        except Exception as e:
            raise ModelError(f"{hub_id}: could not fetch from the Hugging Face hub ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None


@dataclass
class Pretrained:
    """The pretrained model theta_PT as a stream of tensors."""

    spec: str
    dir: Path
    files: WeightFiles

    @classmethod
    def open(cls, spec: str) -> Pretrained:
        d = pretrained_dir(spec)
        return cls(spec, d, WeightFiles(d))

    @property
    def key(self) -> str:
        """Identity of the pretrained weights (resolved folder)."""
        return str(self.dir.resolve())

    def float_names(self) -> list[str]:
        return [n for n, m in self.files.meta.items() if m.floating]


@dataclass(frozen=True)
class Head:
    """A task's own readout head (kept per task, never merged) and the info the checkpoint carries."""

    task: str
    weight: torch.Tensor
    bias: torch.Tensor
    file: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def out_dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def layers(self) -> int | None:
        v = self.info.get("layers")
        return int(v) if v else None


@dataclass
class Checkpoint:
    """A fine-tuned checkpoint aligned to a pretrained model: common float tensors (the task vector's support),
    tensors the pretrained model lacks (kept per task), and pretrained tensors this checkpoint lacks (tau = 0)."""

    name: str
    dir: Path
    files: WeightFiles
    info: dict[str, Any]
    head: Head | None
    to_base: dict[str, str]  # checkpoint name -> pretrained name, float tensors present in both
    extra: list[str]  # checkpoint tensors with no pretrained counterpart (a task's own tensors)
    missing: list[str]  # pretrained float tensors this checkpoint lacks
    source: str = ""  # what the user wrote

    def __post_init__(self) -> None:
        self.from_base = {b: c for c, b in self.to_base.items()}

    @property
    def key(self) -> str:
        return str(self.dir.resolve())

    @property
    def task(self) -> str | None:
        """The task this checkpoint was fine-tuned on (from ntkft.json or `task=path`)."""
        return self.info.get("task")

    def get(self, base_name: str) -> torch.Tensor:
        return self.files.get(self.from_base[base_name])

    def report(self) -> dict[str, Any]:
        """What this checkpoint contributes and what it keeps to itself."""
        return {"name": self.name, "dir": str(self.dir), "task": self.task, "tensors": len(self.to_base),
                "head": str(self.head.file) if self.head else None,
                "head_shape": list(self.head.weight.shape) if self.head else None,
                "extra_tensors": self.extra, "missing_tensors": self.missing,
                "setting": self.info.get("setting"), "layers": self.info.get("layers")}


def parse_checkpoint_arg(arg: str) -> tuple[str | None, str]:
    """'task=path' -> (task, path); 'path' -> (None, path)."""
    if "=" in arg:
        name, _, path = arg.partition("=")
        if name.strip() and path.strip() and not Path(arg).exists():
            return name.strip(), path.strip()
    return None, arg


def open_checkpoint(arg: str | Path, base: Pretrained, name: str | None = None) -> Checkpoint:
    """A fine-tuned checkpoint (ntkft run folder, OUT/model, or any HF directory of the pretrained model's
    architecture), checked tensor by tensor against `base` (one-line errors naming the tensor)."""
    label, path = parse_checkpoint_arg(str(arg))
    d = checkpoint_dir(path)
    files = WeightFiles(d)
    pt_cfg, ft_cfg = base.files.config(), files.config()
    if pt_cfg and ft_cfg and _config_kind(pt_cfg) != _config_kind(ft_cfg):
        raise ModelError(f"{path}: a '{_config_kind(ft_cfg)}' model, but the pretrained model {base.spec} is "
                         f"'{_config_kind(pt_cfg)}'; task vectors need checkpoints of one architecture")
    info = read_info(d)
    label = label or name
    if label and not info.get("task"):  # a plain HF directory: the label names its task
        info = {**info, "task": label}
    task = info.get("task")
    to_base = align(base.files.meta, files.meta)
    if not to_base:
        raise ModelError(f"{path}: shares no tensor names with the pretrained model {base.spec}; "
                         "is it a fine-tuned copy of that model?")
    for c, b in to_base.items():
        mc, mb = files.meta[c], base.files.meta[b]
        if mc.shape != mb.shape:
            raise ModelError(f"{path}: tensor '{c}' has shape {list(mc.shape)}, the pretrained '{b}' has {list(mb.shape)}")
        if mc.dtype != mb.dtype:
            raise ModelError(f"{path}: tensor '{c}' is {str(mc.dtype).replace('torch.', '')}, the pretrained '{b}' is "
                             f"{str(mb.dtype).replace('torch.', '')}; cast one so both match")
    floats = {c: b for c, b in to_base.items() if files.meta[c].floating}
    extra = [c for c in files.meta if c not in to_base]
    matched = set(to_base.values())
    missing = [b for b in base.float_names() if b not in matched]
    head = None
    if (d / HEAD).is_file():
        t = read_head(d / HEAD)
        head = Head(task or d.name, t["weight"], t["bias"], d / HEAD, info)
    label = label or task or (d.parent.name if d.name == "model" else d.name)
    if extra:
        log.info("%s: %d tensor(s) absent from the pretrained model are kept with this task: %s", path, len(extra),
                 ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else ""))
    return Checkpoint(label, d, files, info, head, floats, extra, missing, str(arg))
