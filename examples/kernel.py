"""The eNTK of a pretrained model on task data, its spectrum and decay rate beta.

Run: python examples/kernel.py  (MiniLM-L6 on 64 STS-B pairs, ~20 s on 2 CPU cores).
NTKFT_EXAMPLE_MODEL / NTKFT_EXAMPLE_N make it smaller (the test runs it on a tiny random model)."""

import os

from ntkft import build_readout, encode, kernel_matrix, load_task, subsample
from ntkft.spectrum import analyse

MODEL = os.environ.get("NTKFT_EXAMPLE_MODEL", "minilm-l6")
N = int(os.environ.get("NTKFT_EXAMPLE_N", "64"))

loaded, f = build_readout(MODEL)  # backbone + scalar readout w.h(x) + b
data = subsample(load_task("stsb", "train"), N, seed=0)
x = encode(loaded.tokenizer, loaded.kind, data, max_length=48)
K = kernel_matrix(f, x, method="factored")  # unnormalised J J^T, float64, N x N
rep = analyse(K.numpy(), ci_draws=50)  # spectrum of K/N
print(f"K: {tuple(K.shape)}, lambda_1 of K/N = {rep.eigenvalues[0]:.4g}")
print(f"beta = {rep.beta.beta:.3f}  (interval {rep.beta.low}, {rep.beta.high}); predicted error ~ N^-{rep.rate_exponent}")
