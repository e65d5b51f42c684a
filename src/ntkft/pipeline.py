"""End-to-end runs that join models, tasks and the kernel: what the CLI commands call."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._io import peak_rss_mb, run_meta
from ._runs import RunFolder
from .errors import KernelError
from .kernel import KernelFile, kernel_matrix, load_kernel_file, resolve_method, select_params
from .kernel.api import parse_device
from .kernel.params import num_params
from .models import Readout, fingerprint, load_model
from .tasks import encode, load_task, subsample

log = logging.getLogger(__name__)


def build_readout(model: str, layers: int | None = None, seed: int = 0, sigma: float = 1.0, out_dim: int = 1,
                  dtype: torch.dtype = torch.float32):
    """Load `model`, optionally truncate it after block `layers`, and put the seeded readout on top."""
    loaded = load_model(model, dtype=dtype)
    if layers is not None:
        loaded = loaded.truncate(layers)
    return loaded, Readout.from_loaded(loaded, out_dim=out_dim, sigma=sigma, seed=seed)


def compute_kernel_file(model: str, task: str, n: int = 100, max_length: int = 64, seed: int = 0,
                        params: str = "all", method: str = "auto", layers: int | None = None, split: str = "train",
                        out: str | Path | None = None, max_memory: int | None = None, data_dir: str | None = None,
                        batch_size: int | None = None, progress: bool = True, *, overwrite: bool = False,
                        device: str | None = None, max_disk: int | None = None, sketch_dim: int | None = None,
                        accumulate: str = "host") -> KernelFile:
    """eNTK of `model`'s scalar readout on `n` seeded samples of `task`; written to the run folder `out` if given.

    `out` is an ntkft run folder (kind "kernel") keyed by the model spec and weights, the data used and every
    argument that decides K: the same command resumes a killed run or returns the finished kernel; another
    model, data or setting is refused unless `overwrite`. The kernel keeps its finished work units in
    `out/work` (a checkpoint with its own manifest: it deletes only files it wrote, then the folder if empty).
    Budgets (`max_memory`, `max_disk`, bytes), `device`, `batch_size` and `accumulate` shape only how K is
    computed, not what it is."""
    data = subsample(load_task(task, split, data_dir), n, seed=seed)
    loaded, readout = build_readout(model, layers=layers, seed=seed)
    loaded.check_length(max_length)  # beyond the position embeddings: one line, not an IndexError
    if device is not None:
        readout.to(parse_device(device))
    enc = encode(loaded.tokenizer, loaded.kind, data, max_length=max_length)
    sel = select_params(readout, params)
    meth = resolve_method(method, readout, sel)
    rf = None
    if out is not None:
        key = {"model": model, "weights": fingerprint(readout), "data": data.fingerprint(), "task": data.task.name,
               "split": split, "n": len(data), "max_length": max_length, "seed": seed, "params": params,
               "method": meth.value, "layers": layers, "sketch_dim": sketch_dim, "sigma": 1.0}
        rf = RunFolder(out, "kernel", key, overwrite=overwrite)
        if rf.open() and rf.complete:
            try:
                kf = load_kernel_file(rf.root)
                log.info("%s already holds this kernel", out)
                rf.release()
                return kf
            except KernelError as e:  # a damaged or missing kernel file of a finished run: recompute it
                rf.redo(str(e))
    t0 = time.time()
    info: dict[str, Any] = {}
    k = kernel_matrix(readout, enc, params=params, method=meth, batch_size=batch_size, max_memory=max_memory,
                      checkpoint_dir=rf.root / "work" if rf is not None else None, progress=progress,
                      max_disk=max_disk, device=device, accumulate=accumulate, sketch_dim=sketch_dim, seed=seed,
                      info=info)
    seconds = time.time() - t0
    with torch.no_grad():
        f = readout(enc["input_ids"].to(readout.head.weight.device),
                    enc["attention_mask"].to(readout.head.weight.device)).double().cpu()
    labels = torch.as_tensor(np.asarray(data.labels))
    meta = run_meta(model=model, task=data.task.name, split=split, n=len(data), max_length=max_length, seed=seed,
                    params=params, num_params=num_params(sel), method=meth.value, layers=layers,
                    kind=loaded.kind, hidden_size=loaded.hidden_size, task_type=data.task.type, sigma=1.0,
                    label_map=list(data.task.labels or []) if data.task.type == "classification" else None,
                    dtype="float64 (accumulated from float32 model)", seconds=round(seconds, 2),
                    peak_rss_mb=round(peak_rss_mb(), 1), normalisation="unnormalised: K = J J^T",
                    sketch={"dim": sketch_dim, "seed": seed, "estimator": "unbiased"} if meth.value == "sketch" else None,
                    device=str(readout.head.weight.device),
                    gemm=info.get("gemm", "torch"))
    kf = KernelFile(k.cpu(), enc["input_ids"], enc["attention_mask"], readout.head.weight.detach().cpu().clone(),
                    readout.head.bias.detach().cpu().clone(), f, labels, torch.as_tensor(data.indices), meta)
    if rf is not None:
        staging = rf.path("staging")
        kf.save(staging)
        os.replace(staging / "kernel.safetensors", rf.path("kernel.safetensors"))
        rf.remove("staging")
        rf.finish(**{k: v for k, v in meta.items() if k != "kind"}, model_kind=meta["kind"])  # "kind" is the run's
        log.info("wrote %s", rf.root / "kernel.safetensors")
    return kf


def recompute(path: str | Path, model: str | None = None, method: str = "jacobian", progress: bool = False) -> torch.Tensor:
    """Recompute K from a kernel file and the model alone (head, inputs and settings come from the file)."""
    kf = load_kernel_file(path)
    spec = model or kf.meta.get("model")
    if spec is None:
        raise KernelError(f"{path}: meta has no model; pass the model explicitly")
    loaded, readout = build_readout(spec, layers=kf.meta.get("layers"))
    with torch.no_grad():
        readout.head.weight.copy_(kf.head_weight)
        readout.head.bias.copy_(kf.head_bias)
    x = {"input_ids": kf.input_ids, "attention_mask": kf.attention_mask}
    return kernel_matrix(readout, x, params=kf.meta.get("params", "all"), method=method, progress=progress)
