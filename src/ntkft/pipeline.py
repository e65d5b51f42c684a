"""End-to-end runs that join models, tasks and the kernel: what the CLI commands call."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from ._io import peak_rss_mb, run_meta
from ._runs import RunFolder
from .config import make
from .errors import KernelError
from .kernel import KernelFile, Method, kernel_matrix, load_kernel_file, resolve_method, select_params
from .kernel.executor import Executor, LocalExecutor
from .kernel.options import KernelOptions
from .kernel.params import num_params
from .models import LoadedModel, Readout, fingerprint, load_model
from .tasks import TaskData, TaskSpec, encode, load_task, resolve_task, subsample

log = logging.getLogger(__name__)


def build_readout(model: str, layers: int | None = None, seed: int = 0, sigma: float = 1.0, out_dim: int = 1,
                  dtype: torch.dtype = torch.float32):
    """Load `model`, optionally truncate it after block `layers`, and put the seeded readout on top."""
    loaded = load_model(model, dtype=dtype)
    if layers is not None:
        loaded = loaded.truncate(layers)
    return loaded, Readout.from_loaded(loaded, out_dim=out_dim, sigma=sigma, seed=seed)


class KernelConfig(KernelOptions):
    """`ntkft kernel`: which model, task samples and readout, and how K is computed (the `KernelOptions` fields).

    The CLI's flags are generated from these fields (`max_memory`/`max_disk` in bytes are given there as
    `--max-memory-gb`/`--max-disk-gb`); `options()` is what reaches `kernel_matrix` and the plan."""

    model: str = Field("smollm2-135m", description="model alias, hub id, folder or checkpoint")
    task: str = Field("rte", description="task name, spec file, or a CSV/TSV/JSONL file described by text_columns, "
                                         "label_column and task_type")
    n: int = Field(100, description="samples (under torchrun write --samples: torchrun takes --n for --nnodes)",
                   json_schema_extra={"flags": ["--samples"]})
    max_length: int = Field(64, description="tokens per sample (pairs are trimmed to fit)")
    layers: int | None = Field(None, description="truncate the backbone after this block")
    split: str = Field("train", description="task split to sample from")
    text_columns: list[str] | None = Field(None, description="data file as task: its text column(s), comma-separated")
    label_column: str | None = Field(None, description="data file as task: its label column")
    task_type: Literal["regression", "classification"] | None = Field(None, description="data file as task: its type")
    max_memory_gb: float | None = Field(None, gt=0, description="memory budget (GiB) for factors, tiles and K "
                                                                "(default: a quarter of the available memory; on "
                                                                "a GPU 80% of its free memory)")
    max_disk_gb: float | None = Field(None, ge=0, description="disk budget (GiB) for spilled factors "
                                                              "(default: no limit)")

    @model_validator(mode="after")
    def _one_unit(self) -> KernelConfig:
        for gb, raw in (("max_memory_gb", self.max_memory), ("max_disk_gb", self.max_disk)):
            if getattr(self, gb) is not None and raw is not None:
                raise ValueError(f"{gb}: give {gb} or {gb[:-3]} (bytes), not both")
        return self

    def options(self, device: str | None = None) -> KernelOptions:
        """The `KernelOptions` part (budgets in bytes), on `device` if given."""
        fields = {k: getattr(self, k) for k in KernelOptions.model_fields}
        if self.max_memory_gb is not None:
            fields["max_memory"] = int(self.max_memory_gb * 2**30)
        if self.max_disk_gb is not None:
            fields["max_disk"] = int(self.max_disk_gb * 2**30)
        if device is not None:
            fields["device"] = device
        return KernelOptions.of(**fields)

    def task_spec(self) -> TaskSpec:
        """The TaskSpec this config names (a built-in, a spec file, a data file or table source described by the fields)."""
        return resolve_task(self.task, self.text_columns, self.label_column, self.task_type)


def kernel_run_key(cfg: KernelConfig, readout: Readout, data: TaskData, method: Method) -> dict[str, Any]:
    """The resume key of a kernel run folder: model spec and weights, the data used and every setting that decides K.
    Its form is pinned by a test: run folders written by earlier versions resume."""
    return {"model": cfg.model, "weights": fingerprint(readout), "data": data.fingerprint(), "task": data.task.name,
            "split": cfg.split, "n": len(data), "max_length": cfg.max_length, "seed": cfg.seed,
            "params": cfg.params.value, "method": method.value, "layers": cfg.layers, "sketch_dim": cfg.sketch_dim,
            "sigma": 1.0}


def run_kernel(cfg: KernelConfig, out: str | Path | None = None, *, data_dir: str | None = None,
               overwrite: bool = False, executor: Executor | None = None) -> KernelFile | None:
    """eNTK of `cfg.model`'s scalar readout on `cfg.n` seeded samples of `cfg.task`; written to the run folder `out`.

    `out` is an ntkft run folder (kind "kernel") keyed by `kernel_run_key`: the same command resumes a killed run
    or returns the finished kernel; another model, data or setting is refused unless `overwrite`. Finished work
    units are kept in `out/work` until K is written. `executor` (default: this process) says where the units run;
    with a `DistributedExecutor` every rank calls this, rank 0 owns the run folder and gets the KernelFile, the
    others get None. Budgets, `device`, `batch_size` and `accumulate` shape only how K is computed."""
    ex = executor or LocalExecutor()
    opts = cfg.options(device=ex.device(cfg.device))
    data = subsample(load_task(cfg.task_spec(), cfg.split, data_dir), cfg.n, seed=cfg.seed)
    loaded, readout = build_readout(cfg.model, layers=cfg.layers, seed=cfg.seed)
    dev = opts.torch_device()
    if dev is not None:
        readout.to(dev)
    enc = encode(loaded.tokenizer, loaded.kind, data, max_length=cfg.max_length)
    sel = select_params(readout, opts.params)
    meth = resolve_method(opts.method, readout, sel)
    rf, done = None, None
    if ex.writes and out is not None:
        rf = RunFolder(out, "kernel", kernel_run_key(cfg, readout, data, meth), overwrite=overwrite)
        if rf.open() and rf.complete:
            try:
                done = load_kernel_file(rf.root)
                log.info("%s already holds this kernel", out)
            except KernelError as e:  # a damaged or missing kernel file of a finished run: recompute it
                rf.redo(str(e))
    if not ex.agree(done is None):
        if rf is not None:
            rf.release()
        return done
    work = Path(out) / "work" if out is not None else None
    t0 = time.time()
    info: dict[str, Any] = {}
    k = ex.kernel(readout, enc, opts.model_copy(update={"method": meth}), work, info)
    if k is None or not ex.writes:
        ex.finish(work)
        return None
    kf = _kernel_file(cfg, k, readout, loaded, data, enc, sel, meth, info, time.time() - t0)
    if rf is not None:
        staging = rf.path("staging")
        kf.save(staging)
        os.replace(staging / "kernel.safetensors", rf.path("kernel.safetensors"))
        rf.remove("staging")
        rf.finish(**{k: v for k, v in kf.meta.items() if k != "kind"}, model_kind=kf.meta["kind"])  # "kind": the run's
        log.info("wrote %s", rf.root / "kernel.safetensors")
    ex.finish(work)
    return kf


def _kernel_file(cfg: KernelConfig, k: torch.Tensor, readout: Readout, loaded: LoadedModel, data: TaskData,
                 enc: dict[str, torch.Tensor], sel: dict[str, torch.nn.Parameter], meth: Method, info: dict[str, Any],
                 seconds: float) -> KernelFile:
    """K with the readout's outputs, head, inputs, labels and the meta every kernel file carries."""
    with torch.no_grad():
        f = readout(enc["input_ids"].to(readout.head.weight.device),
                    enc["attention_mask"].to(readout.head.weight.device)).double().cpu()
    labels = torch.as_tensor(np.asarray(data.labels))
    meta = run_meta(model=cfg.model, task=data.task.name, split=cfg.split, n=len(data), max_length=cfg.max_length,
                    seed=cfg.seed, params=cfg.params.value, num_params=num_params(sel), method=meth.value,
                    layers=cfg.layers, kind=loaded.kind, hidden_size=loaded.hidden_size, task_type=data.task.type,
                    sigma=1.0, label_map=list(data.task.labels or []) if data.task.type == "classification" else None,
                    dtype="float64 (accumulated from float32 model)", seconds=round(seconds, 2),
                    peak_rss_mb=round(peak_rss_mb(), 1), normalisation="unnormalised: K = J J^T",
                    sketch={"dim": cfg.sketch_dim, "seed": cfg.seed, "estimator": "unbiased"} if meth == Method.SKETCH
                    else None, device=str(readout.head.weight.device), gemm=info.get("gemm", "torch"))
    return KernelFile(k.cpu(), enc["input_ids"], enc["attention_mask"], readout.head.weight.detach().cpu().clone(),
                      readout.head.bias.detach().cpu().clone(), f, labels, torch.as_tensor(data.indices), meta)


def compute_kernel_file(model: str, task: str, n: int = 100, max_length: int = 64, seed: int = 0, *,
                        out: str | Path | None = None, data_dir: str | None = None, overwrite: bool = False,
                        **options: Any) -> KernelFile:
    """`run_kernel` in this process from keywords: any `KernelConfig` field (`params`, `method`, `layers`, `split`,
    `max_memory`, `batch_size`, `device`, `sketch_dim`, `progress`, ...); a ConfigError naming a bad one."""
    cfg = make(KernelConfig, model=model, task=task, n=n, max_length=max_length, seed=seed, **options)
    kf = run_kernel(cfg, out, data_dir=data_dir, overwrite=overwrite, executor=LocalExecutor())
    assert kf is not None  # one process always writes
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
