"""Distributed eNTK benchmark: `ntkft kernel` on 2 torchrun ranks against `ntkft kernel` in one process.

Same model, task, samples and budget; runs alternate (one, two, one, two) and the best of the repeats is reported.
The kernel seconds are the ones each run records in its kernel file (model loading excluded; for 2 ranks the
time on rank 0 from the first unit to the assembled K, file exchange included); the wall time includes the
launch and the model load. Ranks run with one torch thread each (torchrun's default) and the single process
with torch's default (all cores), so both use the whole machine. K must agree to 1e-10 (relative).

  .venv/bin/python bench/distributed.py                          # minilm-l6, rte, N = 64, 2 repeats
  .venv/bin/python bench/distributed.py --model smollm2-135m --n 32
Writes bench/results/distributed.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(ranks: int, args: argparse.Namespace, out: Path) -> dict:
    common = ["--model", args.model, "--task", args.task, "--max-length", str(args.max_length),
              "--max-memory-gb", str(args.max_memory_gb), "--out", str(out)]
    if ranks == 1:
        cmd = [str(BIN / "ntkft"), "kernel", "--n", str(args.n), *common]
    else:
        cmd = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={ranks}", "-m", "ntkft.cli",
               "kernel", "--samples", str(args.n), *common]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    wall = time.time() - t
    if p.returncode != 0:
        return {"ranks": ranks, "error": (p.stderr or p.stdout).strip().splitlines()[-1:]}
    from ntkft.kernel.io import load_kernel_file

    meta = load_kernel_file(out).meta
    return {"ranks": ranks, "wall_seconds": round(wall, 2), "kernel_seconds": meta["seconds"],
            "peak_rss_mb_rank0": meta["peak_rss_mb"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--task", default="rte")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--max-memory-gb", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "distributed.json"))
    args = ap.parse_args()

    from ntkft.kernel.io import load_kernel_file

    rows: list[dict] = []
    kernels = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for ranks in (1, 2):
                out = Path(tmp) / f"r{ranks}-{rep}"
                row = _run(ranks, args, out)
                row["repeat"] = rep
                rows.append(row)
                print(json.dumps(row), flush=True)
                if "error" not in row and ranks not in kernels:
                    kernels[ranks] = load_kernel_file(out).K.double().numpy()
    agree = None
    if len(kernels) == 2:
        import numpy as np

        agree = float(np.linalg.norm(kernels[2] - kernels[1]) / np.linalg.norm(kernels[1]))
    best = {r: min((x for x in rows if x["ranks"] == r and "error" not in x), key=lambda x: x["kernel_seconds"],
                   default=None) for r in (1, 2)}
    res = {"model": args.model, "task": args.task, "n": args.n, "max_length": args.max_length,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "rows": rows,
           "relative_difference": agree, "best": best}
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"\n| ranks | kernel s (best of {args.repeats}) | wall s | peak RSS rank 0 (MiB) |\n|---|---|---|---|")
    for r, b in best.items():
        if b:
            print(f"| {r} | {b['kernel_seconds']} | {b['wall_seconds']} | {b['peak_rss_mb_rank0']:.0f} |")
    if best[1] and best[2]:
        print(f"\nspeed-up 2 ranks / 1: {best[1]['kernel_seconds'] / best[2]['kernel_seconds']:.2f}x; "
              f"K relative difference {agree:.1e}")


if __name__ == "__main__":
    main()
