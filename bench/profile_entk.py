"""Where `factored`'s time goes: torch.profiler over one eNTK run (model load and encoding excluded).

  .venv/bin/python bench/profile_entk.py                       # smollm2-135m, rte, N = 16, max length 64
  .venv/bin/python bench/profile_entk.py --model minilm-l6 --n 100
Prints the operators by self CPU time (top 15) and the share of the wall time they account for; writes
bench/results/profile-<model>-<n>.txt.
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
    args = ap.parse_args()

    from torch.profiler import ProfilerActivity, profile

    from entk import _inputs  # the benchmark's own inputs: same readout, same encoded samples
    from ntkft.kernel import kernel_matrix

    _, r, x = _inputs(args.model, args.n, args.max_length, args.task)
    t = time.time()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        kernel_matrix(r, x, method="factored", progress=False)
    wall = time.time() - t
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40)
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
    head = (f"factored eNTK, {args.model}, N = {args.n}, T = {args.max_length}: {wall:.1f} s wall under the profiler, "
            f"{total:.1f} s of operator self time (all threads)\n")
    print(head + table)
    out = ROOT / "bench" / "results" / f"profile-{args.model}-{args.n}.txt"
    out.write_text(head + table)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
