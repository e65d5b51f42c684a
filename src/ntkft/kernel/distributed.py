"""The eNTK over the ranks of a torch.distributed group (torchrun; gloo on CPU, NCCL on GPU).

Every rank builds the same deterministic plan (`plan_units`) and, pass by pass, runs the units `i` with
`i % world_size == rank` (each unit once). Produced artifacts (e.g. layer factors) go to the rank's own
checkpoint folder `work/rankNNN` and are read from any rank's folder, so `work` must be a folder every rank
sees (a shared file system across nodes). Each rank sums its contributions into its own float64 accumulator,
checkpointed after every unit: a killed run, relaunched with the same command and world size, resumes. At the
end the accumulators are summed onto rank 0 (one reduce of rows x cols float64 per rank), which assembles K."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError, KernelError
from .api import Job
from .checkpoint import Accumulator, Checkpoint
from .contract import check_model, differentiating
from .engine import assemble, frozen_gc, plan_units
from .options import KernelOptions
from .params import ParamGroup, select_params
from .plan import Artifact, Block, Inputs, Options, Plan, default_max_memory
from .registry import KernelMethod, Method, parse_method, resolve_method

log = logging.getLogger(__name__)

DIE_AFTER = "NTKFT_TEST_DIST_DIE_AFTER"  # test hook "RANK:N": that rank exits (code 3) after N of its units


# ------------------------------------------------------------------ the process group


def in_torchrun() -> bool:
    """True when launched by torchrun (or any launcher that sets RANK, WORLD_SIZE and MASTER_ADDR)."""
    return all(v in os.environ for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def local_device() -> torch.device:
    """This rank's device: cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def init_group(device: torch.device | None = None) -> tuple[int, int]:
    """Join the torchrun process group (NCCL for a CUDA device, else gloo) once; returns (rank, world_size)."""
    if not dist.is_initialized():
        if not in_torchrun():
            raise ConfigError("distributed: RANK/WORLD_SIZE/MASTER_ADDR not set; launch with torchrun "
                              "(python -m torch.distributed.run --nproc-per-node=N -m ntkft.cli ...)")
        dev = device or local_device()
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _collective_device() -> torch.device:
    return local_device() if dist.get_backend() == "nccl" else torch.device("cpu")


def _any(flag: bool) -> bool:
    """True when `flag` holds on any rank."""
    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


# ------------------------------------------------------------------ stores


class RankStore:
    """A Store that writes to this rank's checkpoint and reads units any rank of the run wrote."""

    def __init__(self, own: Checkpoint, roots: list[Path]) -> None:
        self.own, self.roots = own, roots

    def _where(self, name: str) -> Path | None:
        for r in self.roots:
            p = r / f"{name}.safetensors"
            if p.is_file():
                return p
        return None

    def has(self, name: str) -> bool:
        return self.own.has(name) or self._where(name) is not None

    def put(self, name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None, durable: bool = True) -> None:
        # artifacts made for memory may be views of one buffer; safetensors wants separate storages
        self.own.put(name, {k: v.detach().cpu().clone() for k, v in tensors.items()}, meta, durable)

    def get(self, name: str, keys: list[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        from safetensors import SafetensorError, safe_open

        if self.own.has(name):
            return self.own.get(name, keys)
        path = self._where(name)
        if path is None:
            raise KernelError(f"work unit '{name}' is in no rank's folder ({self.roots[0].parent}); is the work "
                              "folder shared by every rank?")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {}).get("meta", "{}"))
                names = set(fh.keys())
                alias = meta.get("alias", {})
                want = list(names) if keys is None else keys
                return {k: fh.get_tensor(alias.get(k, k)) for k in want if alias.get(k, k) in names}, meta
        except (SafetensorError, OSError, ValueError) as e:
            raise KernelError(f"{path}: unreadable work unit ({e}); delete it to recompute") from None

    def remove(self, name: str) -> None:
        self.own.remove(name)

    def clear(self) -> None:
        self.own.clear()

    def nbytes(self) -> int:
        return self.own.nbytes()


def rank_dir(work_dir: str | Path, rank: int) -> Path:
    """The work folder of one rank inside the shared checkpoint folder."""
    return Path(work_dir) / f"rank{rank:03d}"


# ------------------------------------------------------------------ scaling from the plan


@dataclass
class Share:
    """What one rank does for a plan: its units, their summed cost, and the bytes it sends at the end."""

    rank: int
    world_size: int
    units: int
    cost: float
    reduce_bytes: int
    serial: str = "plan + assemble + writing K on rank 0; one reduce of K"

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def shares(plan: Plan, world_size: int) -> list[Share]:
    """Every rank's share of `plan` under the round-robin split `execute_distributed` uses."""
    out = []
    for r in range(world_size):
        mine = [u for p in plan.passes for u in p.produce[r::world_size] + p.contribute[r::world_size]]
        out.append(Share(r, world_size, len(mine), float(sum(u.cost for u in mine)), plan.rows * plan.cols * 8))
    return out


# ------------------------------------------------------------------ execution


def execute_distributed(impl: KernelMethod, plan: Plan, work_dir: str | Path, key: dict[str, Any], progress: bool = True,
                        accumulate_on: torch.device | str = "cpu") -> tuple[torch.Tensor | None, Checkpoint]:
    """This rank's share of every pass; K (float64, sorted order) summed onto rank 0 (None on other ranks).
    Returns the rank's checkpoint too: clear it (`finish_work`) once K is safely written."""
    rank, world = dist.get_rank(), dist.get_world_size()
    digests: list[str | None] = [None] * world
    dist.all_gather_object(digests, plan.digest())
    if len(set(digests)) != 1:
        raise KernelError("distributed: ranks built different plans (different inputs, model or options per rank?)")
    own = Checkpoint(rank_dir(work_dir, rank), {**key, "rank": rank, "world_size": world})
    dist.barrier()  # every rank has dropped stale files before anyone reads another rank's folder
    store = RankStore(own, [rank_dir(work_dir, r) for r in range(world)])
    big = plan.rows * plan.cols * 8 > 64 * 2**20
    acc = Accumulator(plan.rows, plan.cols, own, accumulate_on, every=30.0 if big else 0.0)
    if acc.done:
        log.info("rank %d resumes: %d of its units already done in %s", rank, len(acc.done), own.root)
    die = os.environ.get(DIE_AFTER, "")
    die_after = int(die.split(":")[1]) if die.startswith(f"{rank}:") else None
    done_here = 0
    mine = sum(len(p.produce[rank::world]) + len(p.contribute[rank::world]) for p in plan.passes)
    bar = tqdm(total=mine, desc=f"eNTK ({plan.method}) rank {rank}/{world}", disable=not progress, unit="unit")
    try:
        for p in plan.passes:
            produce, contribute = p.produce[rank::world], p.contribute[rank::world]
            if not _any(not all(acc.has(u.id) for u in contribute)):
                bar.update(len(produce) + len(contribute))
                continue
            for u in produce:
                if not store.has(u.id):
                    art = impl.compute_unit(u, store)
                    assert isinstance(art, Artifact)
                    store.put(u.id, art.tensors, art.meta, durable=False)
                bar.update(1)
            dist.barrier()  # every artifact of the pass exists before any contribution reads it
            for u in contribute:
                if not acc.has(u.id):
                    blk = impl.compute_unit(u, store)
                    assert isinstance(blk, Block)
                    acc.add(u.id, blk.row0, blk.col0, blk.values)
                    acc.save()
                    done_here += 1
                    if die_after is not None and done_here >= die_after:
                        acc.save(force=True)
                        log.error("test hook %s: rank %d exits after %d unit(s)", DIE_AFTER, rank, done_here)
                        os._exit(3)
                bar.update(1)
            acc.save(force=True)
            dist.barrier()  # nobody reads this pass's artifacts any more
            for u in produce:
                store.remove(u.id)
    finally:
        bar.close()
    k = acc.k.to(_collective_device())
    dist.reduce(k, dst=0, op=dist.ReduceOp.SUM)
    return (k.cpu() if rank == 0 else None), own


_OPEN: dict[str, Checkpoint] = {}  # work_dir -> this rank's checkpoint, until `finish_work`


def finish_work(work_dir: str | Path) -> None:
    """After rank 0 wrote K (collective): every rank drops its work files (and `work/` goes when it is empty)."""
    own = _OPEN.pop(str(Path(work_dir)), None)
    dist.barrier()  # rank 0 has written K: nothing is lost if a rank dies from here on
    if own is not None:
        own.clear()
    dist.barrier()
    if dist.get_rank() == 0:
        try:
            Path(work_dir).rmdir()
        except OSError:
            pass


def distributed_kernel_matrix(model: Any, x1: dict[str, torch.Tensor], x2: dict[str, torch.Tensor] | None = None,
                              options: KernelOptions | None = None, *, work_dir: str | Path = "ntkft-work",
                              keep_work: bool = False, info: dict[str, Any] | None = None,
                              **shortcuts: Any) -> torch.Tensor | None:
    """`kernel_matrix` with its units shared over the torchrun ranks: K (float64, caller's order) on rank 0,
    None elsewhere. Same options; `work_dir` (seen by every rank) holds the checkpointed units, removed
    after success unless `keep_work` (then call `finish_work` yourself once K is saved)."""
    opts = KernelOptions.of(options, **shortcuts)
    job = Job.of(model, x1, x2, opts)
    init_group(job.device)
    box = [opts.max_memory if opts.max_memory is not None else default_max_memory()]
    dist.broadcast_object_list(box, src=0)  # every rank must plan with the same budget: rank 0's
    plan_opts = opts.plan_options(job.device, int(box[0]))
    with frozen_gc(), differentiating(job.model, job.params):
        impl, plan = job.plan(plan_opts)
        if info is not None:
            info.update(plan.info)
        k, own = execute_distributed(impl, plan, work_dir, job.key(plan, plan_opts), opts.progress, job.accumulate_on)
    out = assemble(plan, k).detach() if k is not None else None
    _OPEN[str(Path(work_dir))] = own
    if not keep_work:
        finish_work(work_dir)
    return out


def plan_shares(model: nn.Module, x1: dict[str, torch.Tensor], world_size: int, params: ParamGroup | str = "all",
                method: Method | str = Method.AUTO, max_memory: float = 2**30,
                batch_size: int | None = None) -> list[Share]:
    """Without a process group: how `world_size` ranks would split this kernel (for scaling estimates)."""
    model = check_model(model)
    sel = select_params(model, params)
    meth = resolve_method(parse_method(method), model, sel)
    opts = Options(max_memory=int(max_memory), batch_size=batch_size, progress=False)
    with differentiating(model, sel):
        _, plan = plan_units(model, Inputs.of(x1, "x1"), None, sel, meth, opts)
    return shares(plan, world_size)
