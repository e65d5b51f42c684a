"""Where `factored`'s time goes: torch.profiler over one eNTK run (model load and encoding excluded).

  .venv/bin/python bench/profile_entk.py                       # smollm2-135m, rte, N = 16, max length 64
  .venv/bin/python bench/profile_entk.py --model minilm-l6 --n 100
  python3 bench/profile_entk.py --model DIR --n 1000 --device cuda --out OUT/profile.txt   # on a GPU (gpu.py part 3)
Prints the operators by self time (top 15; on a GPU by self CUDA time, with the launch count) and the share of the
wall time they account for; writes bench/results/profile-<model>-<n>.txt (or --out).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--task", default="rte")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from entk import _inputs  # the benchmark's own inputs: same readout, same encoded samples
    from ntkft.kernel import kernel_matrix

    _, r, x = _inputs(args.model, args.n, args.max_length, args.task)
    gpu = args.device != "cpu"
    on: dict = {}
    activities = [ProfilerActivity.CPU]
    if gpu:  # model and inputs on the GPU, K summed there; a 2-sample kernel first loads the CUDA kernels
        r.to(args.device)
        x = {k: v.to(args.device) for k, v in x.items()}
        on = {"device": args.device, "accumulate": "device"}
        kernel_matrix(r, {k: v[:2] for k, v in x.items()}, method="factored", progress=False, **on)
        torch.cuda.synchronize()
        activities.append(ProfilerActivity.CUDA)
    t = time.time()
    with profile(activities=activities) as prof:
        kernel_matrix(r, x, method="factored", progress=False, **on)
        if gpu:
            torch.cuda.synchronize()
    wall = time.time() - t
    key = "self_device_time_total" if gpu else "self_cpu_time_total"
    events = prof.key_averages()
    table = events.table(sort_by=key, row_limit=args.top, max_name_column_width=40)
    total = sum(getattr(e, key, 0) for e in events) / 1e6
    where = "GPU kernel time" if gpu else "operator self time (all threads)"
    name = Path(args.model).name
    head = (f"factored eNTK, {name}, N = {args.n}, T = {args.max_length}, {args.device}: {wall:.1f} s wall under the "
            f"profiler, {total:.1f} s of {where}\n")
    print(head + table)
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"profile-{name}-{args.n}.txt"
    out.write_text(head + table)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
