"""Real-eNTK check of beta's interval (issue 27): one MiniLM-L6 SST-2 eNTK on N training rows, split into D disjoint
draws of N/D rows; beta and its 90% interval per draw against the spread of beta over the draws.

    PYTHONPATH=src python bench/beta_draws.py N D     # e.g. 640 20; writes bench/results/beta-draws-N-D.json
    PYTHONPATH=src python bench/beta_draws.py N D --kernel FILE [--tag T]   # an existing kernel file's first N rows
"""
import json
import sys
import time

import numpy as np
import torch

from ntkft.kernel.io import load_kernel
from ntkft.pipeline import compute_kernel_file
from ntkft.spectrum import estimate_beta

torch.set_num_threads(1)
N, D = int(sys.argv[1]), int(sys.argv[2])
given = sys.argv[sys.argv.index("--kernel") + 1] if "--kernel" in sys.argv else None
tag = sys.argv[sys.argv.index("--tag") + 1] if "--tag" in sys.argv else ""
t = time.time()
if given:  # e.g. the efficiency run's pool kernel (MiniLM-L6, max length 64): its first N rows
    K = load_kernel(given).K[:N, :N]
else:
    kf = compute_kernel_file("minilm-l6", "sst2", n=N, max_length=32, out=f"runs/beta-draws/sst2-{N}", progress=False)
    K = kf.K.double().numpy()
print("kernel", K.shape, round(time.time() - t), "s", flush=True)
perm = np.random.default_rng(0).permutation(N)
rows = []
for d in range(D):
    idx = perm[d * (N // D):(d + 1) * (N // D)]
    ci = estimate_beta(K[np.ix_(idx, idx)], draws=100, seed=d)
    rows.append({"beta": ci.beta, "low": ci.low, "high": ci.high, "shift": ci.shift, "k": [ci.k_min, ci.k_max]})
    print(d, rows[-1], flush=True)
full = estimate_beta(K, draws=100)
b = np.array([r["beta"] for r in rows])
hw = np.array([(r["high"] - r["low"]) / 2 for r in rows])
out = {"model": "minilm-l6", "task": "sst2", "kernel": given or "computed (max length 32)",
       "N": N, "draws": D, "n_per_draw": N // D, "beta_mean": float(b.mean()),
       "beta_sd": float(b.std(ddof=1)), "half_width_median": float(np.median(hw)), "implied_sd": float(np.median(hw)) / 1.645,
       "coverage_of_mean": float(np.mean([(r["low"] <= b.mean() <= r["high"]) for r in rows])),
       "full": {"beta": full.beta, "low": full.low, "high": full.high, "shift": full.shift}, "rows": rows}
json.dump(out, open(f"bench/results/beta-draws-{N}-{D}{tag}.json", "w"), indent=1)
print({k: v for k, v in out.items() if k != "rows"})
