"""Real-eNTK check of beta's interval (issue 27): each task's eNTK from an efficiency run (MiniLM-L6, N pool rows),
split into D disjoint draws of N // D rows; per draw beta with both 90% intervals (parametric, the default, and the
previous subsampling rule) against the spread of beta over the draws.

    PYTHONPATH=src python bench/beta_draws.py KERNELS_DIR D OUT.json [TASK ...]
    # e.g. runs/eff/kernels 20 bench/results/beta-draws-eff-20.json   (the efficiency run's kernels, all tasks)

A draw's interval should hold the mean of beta over the draws (the estimand at this N) about 90% of the time, and
its implied sd (half-width / 1.645) should be near the sd over the draws. One thread; about 2 s per draw.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ntkft.kernel.io import load_kernel
from ntkft.spectrum import subsample_ci

torch.set_num_threads(1)
Z = 1.6448536269514722
src, D, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
tasks = sys.argv[4:] or sorted(p.stem for p in src.glob("*.safetensors"))
res = {"model": "minilm-l6", "kernels": str(src), "draws": D, "tasks": [],
       "command": "PYTHONPATH=src python bench/beta_draws.py " + " ".join(sys.argv[1:])}
t0 = time.time()
for task in tasks:
    K = load_kernel(str(src / f"{task}.safetensors")).K
    K = np.asarray(K.double().numpy() if hasattr(K, "double") else K, dtype=np.float64)
    n = K.shape[0] // D
    res["pool"], res["n_per_draw"] = K.shape[0], n
    perm = np.random.default_rng(0).permutation(K.shape[0])
    rows = []
    for d in range(D):
        idx = perm[d * n:(d + 1) * n]
        kk = K[np.ix_(idx, idx)]
        p = subsample_ci(kk, draws=40, seed=d)
        q = subsample_ci(kk, draws=100, seed=d, interval="subsample")
        rows.append({"beta": p.beta, "parametric": [p.low, p.high], "subsample": [q.low, q.high]})
    b = np.array([r["beta"] for r in rows])
    t = {"task": task, "betas": b.tolist(), "beta_mean": float(b.mean()), "beta_sd": float(b.std(ddof=1)), "rows": rows}
    for rule in ("parametric", "subsample"):
        ok = [r for r in rows if r[rule][0] is not None]
        half = [(r[rule][1] - r[rule][0]) / 2 for r in ok]
        hits = int(sum(r[rule][0] <= b.mean() <= r[rule][1] for r in ok))
        t[rule] = {"implied_sd": float(np.median(half)) / Z, "hits": hits,
                   "intervals": len(ok)}
    res["tasks"].append(t)
    print(task, {k: v for k, v in t.items() if k not in ("rows", "betas")}, f"{time.time() - t0:.0f} s", flush=True)
res["seconds"] = time.time() - t0
out.write_text(json.dumps(res, indent=1))
