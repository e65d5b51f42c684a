"""The paper's reference network (Section 3.2, B.2; docs/theory.md sec. 2), width n the one knob.

Input: token ids into a FIXED (never trained) embedding table E (vocab x d0), so x in R^{T x d0} as in the paper.
f^1 = x W^in + b (d0 -> n), then `blocks` pre-LN decoder blocks without positional encoding:
    h <- h + MHA(LN(h)),   MHA: H heads, head h = softmax_rows((1/n) g W^Q_h (g W^K_h)^T) g W^V_h   (eq 3, 1/d scaling)
                           heads concatenated and projected by W^O (Hn x n)                          (eq 4)
    h <- h + phi(LN(h) W^F + b^F)   (phi = tanh: odd, smooth, Assumption 4.6)
then LN, masked mean pooling over tokens and a scalar readout `head` (n -> 1).
Init: W ~ N(0, sigma^2 / fan_in) with sigma_Q, sigma_K, sigma_V, sigma_O (fan_in H n for W^O), sigma_W; biases
N(0, sigma_b^2); LN gain 1, shift 0. Standard parameterisation trains W itself; NTK parameterisation trains w with
W = (sigma / sqrt(fan_in)) w (biases b = sigma_b beta). Both draw the same N(0, 1) numbers, so with one seed they are
the same function and d f / d w = (sigma / sqrt(fan_in)) d f / d W, tensor by tensor (`ScaledLinear.scale`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class RefSpec:
    """Architecture and init of a ReferenceTransformer; `width` is n = d^l = d^{l,G}."""

    width: int = 64
    heads: int = 2
    blocks: int = 1
    vocab: int = 32
    embed_dim: int = 16
    sigma_q: float = 1.0
    sigma_k: float = 1.0
    sigma_v: float = 1.0
    sigma_o: float = 1.0
    sigma_w: float = 1.0
    sigma_b: float = 0.1
    parameterisation: Literal["standard", "ntk"] = "standard"
    causal: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class ScaledLinear(nn.Module):
    """y = x (scale * weight)^T + scale_b * bias; scale = 1 (standard) or sigma / sqrt(fan_in) (NTK)."""

    def __init__(self, fan_in: int, fan_out: int, sigma: float, sigma_b: float | None, ntk: bool,
                 gen: torch.Generator) -> None:
        super().__init__()
        z = torch.randn(fan_out, fan_in, generator=gen)
        std = sigma / math.sqrt(fan_in)
        self.scale = std if ntk else 1.0
        self.weight = nn.Parameter(z if ntk else z * std)
        self.bias = None
        if sigma_b is not None:
            zb = torch.randn(fan_out, generator=gen)
            self.scale_b = sigma_b if ntk else 1.0
            self.bias = nn.Parameter(zb if ntk else zb * sigma_b)
        self.record = False  # when True, keep the input and the output (with its gradient) for the factored eNTK
        self.saved: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight * self.scale if self.scale != 1.0 else self.weight)
        if self.bias is not None:
            y = y + (self.bias * self.scale_b if self.scale_b != 1.0 else self.bias)
        if self.record and y.requires_grad:
            y.retain_grad()
            self.saved = (x.detach(), y)
        return y


class LayerNorm(nn.Module):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta over the last dimension (eq 68-70)."""

    def __init__(self, n: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.gamma, self.beta, self.eps = nn.Parameter(torch.ones(n)), nn.Parameter(torch.zeros(n)), eps
        self.record = False
        self.saved: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xhat = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        y = xhat * self.gamma + self.beta
        if self.record and y.requires_grad:
            y.retain_grad()
            self.saved = (xhat.detach(), y)
        return y


class Attention(nn.Module):
    """Multi-head attention with the paper's 1/d^{l,G} = 1/n score scaling (eq 3-4); no biases."""

    def __init__(self, s: RefSpec, gen: torch.Generator) -> None:
        super().__init__()
        n, hh, ntk = s.width, s.heads, s.parameterisation == "ntk"
        self.n, self.h, self.causal = n, hh, s.causal
        self.q = ScaledLinear(n, hh * n, s.sigma_q, None, ntk, gen)  # the H matrices W^Q_h side by side
        self.k = ScaledLinear(n, hh * n, s.sigma_k, None, ntk, gen)
        self.v = ScaledLinear(n, hh * n, s.sigma_v, None, ntk, gen)
        self.o = ScaledLinear(hh * n, n, s.sigma_o, None, ntk, gen)  # fan_in H n: N(0, sigma_O^2 / (H n))

    def forward(self, g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, n = g.shape
        split = lambda z: z.view(b, t, self.h, n).transpose(1, 2)  # noqa: E731  (B, H, T, n)
        q, k, v = split(self.q(g)), split(self.k(g)), split(self.v(g))
        scores = q @ k.transpose(-1, -2) / self.n
        allowed = mask[:, None, None, :].bool()
        if self.causal:
            allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=g.device).tril()
        p = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        heads = (p @ v).transpose(1, 2).reshape(b, t, self.h * n)  # [A_1, ..., A_H]
        return self.o(heads)


class Block(nn.Module):
    """Pre-LN decoder block: h + MHA(LN h), then h + tanh(LN(h) W^F + b^F) (eq 67)."""

    def __init__(self, s: RefSpec, gen: torch.Generator) -> None:
        super().__init__()
        self.ln1, self.attn = LayerNorm(s.width), Attention(s, gen)
        self.ln2 = LayerNorm(s.width)
        self.fc = ScaledLinear(s.width, s.width, s.sigma_w, s.sigma_b, s.parameterisation == "ntk", gen)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.ln1(h), mask)
        return h + torch.tanh(self.fc(self.ln2(h)))


class ReferenceTransformer(nn.Module):
    """The paper's transformer (docs/theory.md sec. 2) as an eNTK-engine model: `model(input_ids, attention_mask)` -> (B, 1),
    a Linear-like readout named `head`, `out_dim = 1`."""

    out_dim = 1
    embedding: torch.Tensor

    def __init__(self, spec: RefSpec, seed: int = 0, embedding: torch.Tensor | None = None) -> None:
        super().__init__()
        if spec.width < 1 or spec.heads < 1 or spec.blocks < 1 or spec.vocab < 1 or spec.embed_dim < 1:
            raise ConfigError(f"width, heads, blocks, vocab, embed_dim must be >= 1, got {spec}")
        if spec.parameterisation not in ("standard", "ntk"):
            raise ConfigError(f"parameterisation must be 'standard' or 'ntk', got {spec.parameterisation!r}")
        self.spec = spec
        gen = torch.Generator().manual_seed(seed)
        if embedding is None:  # the input representation: fixed, shared by every width (seeded apart from the init)
            embedding = torch.randn(spec.vocab, spec.embed_dim, generator=torch.Generator().manual_seed(10_000 + seed))
        if tuple(embedding.shape) != (spec.vocab, spec.embed_dim):
            raise ConfigError(f"embedding must be ({spec.vocab}, {spec.embed_dim}), got {tuple(embedding.shape)}")
        self.register_buffer("embedding", embedding.clone().float())
        ntk = spec.parameterisation == "ntk"
        self.inp = ScaledLinear(spec.embed_dim, spec.width, spec.sigma_w, spec.sigma_b, ntk, gen)
        self.blocks = nn.ModuleList(Block(spec, gen) for _ in range(spec.blocks))
        self.ln_f = LayerNorm(spec.width)
        self.head = ScaledLinear(spec.width, 1, spec.sigma_w, spec.sigma_b, ntk, gen)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled representation h(x) in R^n that the head reads."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        h = self.inp(self.embedding[input_ids])
        for blk in self.blocks:
            h = blk(h, attention_mask)
        m = attention_mask.to(h.dtype)[..., None]
        return (self.ln_f(h) * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask))


def recorded_modules(model: nn.Module) -> list[ScaledLinear | LayerNorm]:
    """The ScaledLinear and LayerNorm modules, whose parameters are all the trainable ones."""
    return [m for m in model.modules() if isinstance(m, (ScaledLinear, LayerNorm))]
