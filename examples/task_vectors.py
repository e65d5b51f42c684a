"""Task vectors: fine-tune on two tasks, compare the vectors (cosine) and add them to the pretrained model.

Run: python examples/task_vectors.py  (MiniLM-L6 on SST-2 and RTE, 64 rows each, a few minutes on 2 CPU cores)."""

import os
from pathlib import Path

from ntkft.finetune import FinetuneConfig, finetune
from ntkft.taskvec import add, cosine_matrix, task_vectors

MODEL = os.environ.get("NTKFT_EXAMPLE_MODEL", "minilm-l6")
N = int(os.environ.get("NTKFT_EXAMPLE_N", "64"))
OUT = Path(os.environ.get("NTKFT_EXAMPLE_OUT", "runs/example-taskvec"))

checkpoints = []
for task in ("sst2", "rte"):
    cfg = FinetuneConfig(model=MODEL, task=task, setting="full", n_train=N, n_test=N, lr=5e-5, max_steps=8,
                         eval_every=4, batch_size=16, max_length=48, tensorboard=False, center_output=False)
    finetune(cfg, out=OUT / task, progress=False)
    checkpoints.append(f"{task}={OUT / task / 'model'}")  # `ntkft finetune` saves the model in OUT/model

vectors = task_vectors(MODEL, checkpoints)  # tau = theta_FT - theta_PT, one per checkpoint
print("cosine(tau_sst2, tau_rte) =", float(cosine_matrix(vectors, progress=False)[0, 1]))
merged = add(vectors, 0.5, OUT / "merged")  # theta_PT + 0.5 (tau_sst2 + tau_rte), a loadable checkpoint
print("merged model written to", merged)
