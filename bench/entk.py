"""eNTK benchmark: smollm2-135m, all parameters, N real RTE pairs, max length 64, scalar readout.

Each configuration runs in its own process so wall time and peak RSS are its own. Writes
bench/results/entk.json and prints a table for bench/README.md. Peers: the chunked torch.func
Jacobian reference and nngeometry's Gram matrix (if it installs and handles the model).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, resource, sys, time, torch
from ntkft.pipeline import build_readout
from ntkft.tasks import encode, load_task, subsample
from ntkft.kernel import kernel_matrix
method, n = sys.argv[1], int(sys.argv[2])
loaded, r = build_readout("smollm2-135m")
x = encode(loaded.tokenizer, loaded.kind, subsample(load_task("rte", "train"), n, seed=0), max_length=64)
t = time.time()
if method == "nngeometry":
    from nngeometry import GramMatrix
    from nngeometry.layercollection import LayerCollection
    LayerCollection.from_model(r)  # raises on layer types nngeometry does not know (e.g. LlamaRMSNorm)
    data = torch.utils.data.TensorDataset(x["input_ids"], x["attention_mask"])
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    g = GramMatrix(r, loader, function=lambda ids, mask: r(ids, mask)[:, None])
    k = g.get_dense_tensor().reshape(n, n)
else:
    k = kernel_matrix(r, x, method=method, progress=False, max_memory=4 * 2**30)
dt = time.time() - t
print(json.dumps({"seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "trace": float(k.trace())}))
"""


def run(method: str, n: int, timeout: int) -> dict:
    t = time.time()
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, method, str(n)], capture_output=True, text=True,
                           timeout=timeout, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        return {"method": method, "n": n, "error": f"did not finish within {timeout}s"}
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"method": method, "n": n, "error": tail[:300], "wall_s": time.time() - t}
    return {"method": method, "n": n, **json.loads(p.stdout.strip().splitlines()[-1])}


def main() -> None:
    sizes = [int(s) for s in os.environ.get("BENCH_SIZES", "25,50,100,200").split(",")]
    peers_n = int(os.environ.get("BENCH_PEER_N", "100"))
    peer_timeout = int(os.environ.get("BENCH_PEER_TIMEOUT", "1800"))
    small = int(os.environ.get("BENCH_SMALL_N", "16"))
    rows = [run("factored", n, 1800) for n in sizes]
    rows.append(run("jacobian", peers_n, peer_timeout))
    rows.append(run("nngeometry", peers_n, 900))
    # a size at which the reference surely finishes, for a measured (not bounded) ratio
    rows += [run("factored", small, 1800), run("jacobian", small, peer_timeout)]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    import torch
    import transformers

    out = {"benchmark": "eNTK smollm2-135m all params, RTE train, max_length 64, scalar readout",
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "python": platform.python_version()},
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
           "commit": commit, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}
    for n in (peers_n, small):
        ok = {r["method"]: r for r in rows if "seconds" in r and r["n"] == n}
        peers = [r["seconds"] for m, r in ok.items() if m != "factored"]
        if "factored" in ok and peers:
            out[f"speedup_vs_best_peer_n{n}"] = min(peers) / ok["factored"]["seconds"]
        elif "factored" in ok and any(r["method"] == "jacobian" and r["n"] == n and "did not finish" in
                                      r.get("error", "") for r in rows):
            out[f"speedup_vs_best_peer_n{n}_at_least"] = peer_timeout / ok["factored"]["seconds"]
    path = ROOT / "bench" / "results" / "entk.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print("| method | N | seconds | peak RSS (MiB) | note |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['n']} | {r.get('seconds', float('nan')):.1f} | "
              f"{r.get('peak_rss_mb', float('nan')):.0f} | {r.get('error', '')} |")
    for k, v in out.items():
        if k.startswith("speedup"):
            print(f"{k}: {v:.1f}")


if __name__ == "__main__":
    main()
