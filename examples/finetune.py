"""Fine-tune with hold-out early stopping and compare with the constant predictor on the same test rows.

Run: python examples/finetune.py  (MiniLM-L6, STS-B, 128 training pairs, ~1 min on 2 CPU cores)."""

import os

import numpy as np

from ntkft.finetune import FinetuneConfig, finetune
from ntkft.tasks import load_task

MODEL = os.environ.get("NTKFT_EXAMPLE_MODEL", "minilm-l6")
N = int(os.environ.get("NTKFT_EXAMPLE_N", "128"))

cfg = FinetuneConfig(model=MODEL, task="stsb", setting="full", n_train=N, n_test=N, lr=1e-4,
                     max_steps=max(4, N // 4), eval_every=max(1, N // 32), patience=3, batch_size=16, max_length=48,
                     save_model=False, tensorboard=False)
res = finetune(cfg, out=os.environ.get("NTKFT_EXAMPLE_OUT", "runs/example-finetune"), progress=False)
print(f"stopped at step {res.stopped_step} ({res.stop_reason}); kept step {res.best_step}")
print("test (kept weights):", {k: round(v, 4) for k, v in res.test_best.items() if isinstance(v, float)})
train = load_task("stsb", "train").labels
print(f"for scale: the variance of the training scores is {np.var(train):.3f} (the constant predictor's MSE ~ that)")
for w in res.warnings:
    print("warning:", w)
