"""Expected cost of an exact eNTK with `factored` for a GPT-Neo-shaped model on one GPU (issue 10, item 5).

Pure arithmetic from the architecture (no download, no GPU): parameter counts, the GEMM flops of the
forward/backward with hooks, the per-sample weight gradients and the Gram, the memory of the layer factors,
and the time at a datasheet peak rate. Default: GPT-Neo-1.3B, N = 100, T = 128, one 80 GB A100 and H100.

    .venv/bin/python bench/expected_gpu.py [--n 100] [--t 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

# EleutherAI/gpt-neo-1.3B config.json: hidden_size, num_layers, intermediate (4 x hidden), vocab, positions
GPT_NEO_13B = {"hidden": 2048, "layers": 24, "ffn": 8192, "vocab": 50257, "positions": 2048}

# datasheet dense peaks, FLOP/s (NVIDIA A100 80GB SXM and H100 80GB SXM): plain FP32, TF32 tensor cores, FP64
GPUS = {
    "A100-80GB": {"fp32": 19.5e12, "tf32": 156e12, "fp64": 19.5e12, "memory_gb": 80},
    "H100-80GB": {"fp32": 67e12, "tf32": 494e12, "fp64": 67e12, "memory_gb": 80},
}


@dataclass
class Expected:
    """What one exact kernel costs: flops by part, bytes by part, seconds at the peak rates."""

    params: int
    linear_params: int
    tokens: int
    flops_forward_backward: float  # forward + input-gradient backward: 4 P_lin per token
    flops_per_sample_grads: float  # A_i^T D_i for every sample and linear layer: 2 P_lin per token
    flops_gram: float  # upper triangle of G G^T in float64: N (N + 1) P
    bytes_model: int  # float32 weights
    bytes_factors: int  # float32 A (inputs) and D (output gradients) of every linear layer, all N samples
    bytes_grads_widest_layer: int  # per-sample gradients of the widest layer for all N (float32)
    bytes_k: int


def expected(cfg: dict, n: int, t: int) -> Expected:
    """Exact factored eNTK of a GPT-Neo-shaped decoder on n samples of t tokens, scalar readout. The parameter
    count without the readout is the published one (1,315,575,808 for 1.3B; 125,198,592 for 125M with h = 768)."""
    h, f, layers = cfg["hidden"], cfg["ffn"], cfg["layers"]
    # per block: q, k, v, out_proj (h x h), c_fc (h x f), c_proj (f x h); biases on out_proj, c_fc, c_proj
    lin_w = 4 * h * h + 2 * h * f
    bias = h + f + h
    norms = 2 * 2 * h
    emb = cfg["vocab"] * h + cfg["positions"] * h
    p_lin = layers * lin_w
    params = emb + layers * (lin_w + bias + norms) + 2 * h + (h + 1)  # final norm, scalar readout
    tokens = n * t
    io_per_token = layers * (3 * 2 * h + 2 * h + (h + f) + (f + h))  # d_in + d_out summed over linear layers
    return Expected(
        params=params,
        linear_params=p_lin,
        tokens=tokens,
        flops_forward_backward=4.0 * p_lin * tokens,
        flops_per_sample_grads=2.0 * p_lin * tokens,
        flops_gram=float(n * (n + 1)) * params,
        bytes_model=4 * params,
        bytes_factors=4 * io_per_token * tokens,
        bytes_grads_widest_layer=4 * n * h * f,
        bytes_k=8 * n * n,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--t", type=int, default=128)
    ap.add_argument("--json", default=None, help="also write the figures here")
    a = ap.parse_args()
    e = expected(GPT_NEO_13B, a.n, a.t)
    f32 = e.flops_forward_backward + e.flops_per_sample_grads
    print(f"GPT-Neo-1.3B, N = {a.n}, T = {a.t}: P = {e.params / 1e9:.3f}B ({e.linear_params / 1e9:.3f}B in linear "
          f"layers), {e.tokens} tokens")
    print(f"  flops: forward+backward {e.flops_forward_backward:.2e}, per-sample grads {e.flops_per_sample_grads:.2e}"
          f" (float32); Gram {e.flops_gram:.2e} (float64)")
    print(f"  memory: model {e.bytes_model / 1e9:.1f} GB, all layer factors {e.bytes_factors / 1e9:.1f} GB, "
          f"widest layer's per-sample grads {e.bytes_grads_widest_layer / 1e9:.1f} GB, K {e.bytes_k / 1e6:.2f} MB")
    rows = []
    for gpu, r in GPUS.items():
        floor = f32 / r["fp32"] + e.flops_gram / r["fp64"]
        tf32 = f32 / r["tf32"] + e.flops_gram / r["fp64"]
        rows.append({"gpu": gpu, "floor_fp32_s": floor, "floor_tf32_s": tf32, **r})
        print(f"  {gpu}: GEMM floor {floor:.1f} s at the FP32 peak ({tf32:.1f} s with TF32 matmuls, not "
              f"float64-exact); factors fit in one pass: {e.bytes_model + e.bytes_factors < 0.9 * r['memory_gb'] * 1e9}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"model": "gpt-neo-1.3B", "n": a.n, "t": a.t, **asdict(e), "gpus": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
