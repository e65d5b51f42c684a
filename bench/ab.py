"""A/B of `factored` across commits: is a change a slowdown, or is the machine slower today?

Each commit is checked out into a temporary git worktree and timed in its own process on the same readout and
inputs (the benchmark's own `_inputs`: real RTE train pairs, max length 64, model load excluded); runs alternate
between the commits (A B, B A, ...). Speed lives here, never in the tests.

  .venv/bin/python bench/ab.py 5302877 HEAD --model smollm2-135m --n 100 --repeats 2
  .venv/bin/python bench/ab.py be29420 HEAD --n 100 --max-memory-gb 2 --max-disk-gb 2.2   # 3 layer groups
Writes bench/results/ab-<model>-<n>.json (or a numbered name next to an existing one) and prints the seconds per commit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys, time, json
sys.path.insert(0, {bench!r})
from entk import _inputs
from ntkft.kernel import kernel_matrix
_, r, x = _inputs({model!r}, {n}, 64, "rte")
t = time.perf_counter()
k = kernel_matrix(r, x, method="factored", progress=False, **{options!r})
print("RESULT " + json.dumps({{"seconds": time.perf_counter() - t, "trace": float(k.trace())}}))
"""


def time_commit(tree: Path, model: str, n: int, options: dict | None = None) -> dict:
    """One timed run of `factored` with the package from `tree` (a worktree of one commit)."""
    code = CHILD.format(bench=str(ROOT / "bench"), model=model, n=n, options=options or {})
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=3600)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr.strip().splitlines() or [f"exit code {p.returncode}"])[-1][:300]}
    return json.loads(lines[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("commits", nargs="+", help="two or more commits (any git revision)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-memory-gb", type=float, default=None, help="kernel budget (default: the kernel's own)")
    ap.add_argument("--max-disk-gb", type=float, default=None, help="scratch budget (small ones force layer groups)")
    ap.add_argument("--out", default=None, help="result file (default bench/results/ab-<model>-<n>.json; an "
                    "existing file is never replaced: the new one gets a numbered name)")
    args = ap.parse_args()
    shas = [subprocess.run(["git", "rev-parse", c], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
            for c in args.commits]
    options = {k: v * 2**30 for k, v in (("max_memory", args.max_memory_gb), ("max_disk", args.max_disk_gb))
               if v is not None}
    tmp = Path(tempfile.mkdtemp(prefix="ntkft-ab-"))
    trees = {}
    try:
        for c, sha in zip(args.commits, shas):
            trees[c] = tmp / sha[:12]
            subprocess.run(["git", "worktree", "add", "-f", "--detach", str(trees[c]), sha], cwd=ROOT, check=True,
                           capture_output=True)
        runs: dict[str, list[dict]] = {c: [] for c in args.commits}
        for rep in range(args.repeats):
            for c in (args.commits if rep % 2 == 0 else args.commits[::-1]):
                row = time_commit(trees[c], args.model, args.n, options)
                runs[c].append(row)
                print(json.dumps({"commit": c, **row}), flush=True)
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder, empty by now
    out = {"model": args.model, "n": args.n, "options": options, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "commits": {c: {"sha": sha, "runs": runs[c]} for c, sha in zip(args.commits, shas)}}
    path = Path(args.out) if args.out else ROOT / "bench" / "results" / f"ab-{args.model}-{args.n}.json"
    stem, k = path, 2
    while path.exists():  # earlier A/Bs are cited in the README: keep them
        path, k = stem.with_name(f"{stem.stem}-{k}{stem.suffix}"), k + 1
    path.write_text(json.dumps(out, indent=2) + "\n")
    for c in args.commits:
        secs = [r["seconds"] for r in runs[c] if "seconds" in r]
        print(f"{c}: " + (", ".join(f"{s:.1f}" for s in secs) + " s" if secs else "failed"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
