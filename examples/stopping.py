"""The RWY stopping rule on an eNTK, turned into a `ntkft finetune` command.

Run: python examples/stopping.py  (MiniLM-L6, 64 STS-B pairs)."""

import os

from ntkft import compute_kernel_file
from ntkft.stopping import finetune_action, stop_report

MODEL = os.environ.get("NTKFT_EXAMPLE_MODEL", "minilm-l6")
N = int(os.environ.get("NTKFT_EXAMPLE_N", "64"))

kf = compute_kernel_file(MODEL, "stsb", n=N, max_length=48)  # K, labels, f_PT(X) of N seeded training pairs
y = kf.labels.double().numpy()
rep = stop_report(kf.K, y, kf.outputs.numpy())  # sigma and the radius R estimated from the kernel
act = finetune_action(rep, y, lr=rep.step / 2, batch_size=16)
print(f"T_hat = {rep.t_hat} kernel-GD steps of alpha = {rep.step:.3g}")
print(f"run: {act.command}   ({act.epochs:.2g} epochs at batch 16)")
print(f"bound {act.bound_mse:.3g} vs constant predictor {act.constant_mse:.3g}: {act.note}")
