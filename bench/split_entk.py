"""Where `factored`'s wall time goes, by step: one eNTK run with its main functions timed (no profiler overhead).

  .venv/bin/python bench/split_entk.py                                  # smollm2-135m, rte, N = 100, T = 64
  .venv/bin/python bench/split_entk.py --model minilm-l6 --n 16 --repeats 3
Steps (seconds, summed over calls; nested steps are inside their parent): probe (layer check and sizes), features
(forward + backward per batch, of it capture), write / read / remove (the spill's files, when factors go to disk),
gram (the Gram units, of it psg: per-sample gradients by bmm, ghost: pair-form layers), and the total. Prints one
JSON line per repeat; with --out also writes them to a file. Speed lives here, never in the tests.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def _timed(owner: Any, name: str, key: str, acc: dict[str, float]) -> None:
    """Replace owner.name by a wrapper that adds its wall time to acc[key]."""
    real: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            acc[key] += time.perf_counter() - t

    setattr(owner, name, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--task", default="rte")
    ap.add_argument("--max-memory-gb", type=float, default=None, help="kernel budget (default: the kernel's own)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from entk import _inputs  # the benchmark's own inputs: same readout, same encoded samples
    from ntkft.kernel import checkpoint, factored, kernel_matrix

    _, r, x = _inputs(args.model, args.n, args.max_length, args.task)
    acc: dict[str, float] = defaultdict(float)
    for owner, name, key in [(factored.FactoredMethod, "probe", "probe"), (factored.FactoredMethod, "_features", "features"),
                             (factored, "capture", "capture"), (checkpoint.Checkpoint, "put", "write"),
                             (checkpoint.Checkpoint, "get", "read"), (checkpoint.Checkpoint, "remove", "remove"),
                             (factored.FactoredMethod, "_gram", "gram"), (factored, "_psg", "psg"),
                             (factored, "_ghost", "ghost")]:
        _timed(owner, name, key, acc)
    budget = None if args.max_memory_gb is None else args.max_memory_gb * 2**30
    lines = []
    for _ in range(args.repeats):
        acc.clear()
        t = time.perf_counter()
        kernel_matrix(r, x, method="factored", progress=False, max_memory=budget)
        row = {"model": args.model, "n": args.n, "total": time.perf_counter() - t,
               **{k: round(v, 3) for k, v in sorted(acc.items())},
               "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        print(json.dumps(row), flush=True)
        lines.append(json.dumps(row))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
