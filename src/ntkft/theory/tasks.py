"""Synthetic, seeded source and target tasks for the lab: a teacher reference transformer and shifted teachers.

Inputs are sequences of `seq_len` tokens. The fixed embedding table is block-orthogonal: tokens in the lower half of
the vocabulary ("A") live on the first d0/2 coordinates, the upper half ("B") on the last d0/2. Sequences drawn from A
only and from B only therefore have orthogonal token embeddings, which makes their infinite-width eNTK block vanish
for the reference network (odd tanh, zero-mean init): the orthogonal-by-construction tasks of the arithmetic lab.

Source: y = f_src(x) + noise, f_src a random teacher (width `teacher_width`, sigma_Q = sigma_K = `teacher_qk` so its
attention is far from uniform), standardised to mean 0 and variance 1 over the input distribution.
Target: the same teacher with every weight tensor shifted by `shift` times its own standard deviation in N(0, 1)
directions (a related task), standardised the same way. Noise is Gaussian with sd `noise` (sub-Gaussian, eq 12).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import torch

from .model import ReferenceTransformer, RefSpec


@dataclass
class Split:
    """Inputs `ids` (N, T), noiseless values `f` and noisy labels `y` (float64)."""

    ids: torch.Tensor
    f: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]

    def head(self, n: int) -> Split:
        return Split(self.ids[:n], self.f[:n], self.y[:n])


@dataclass
class TargetData:
    """Train / validation (hold-out stopping) / test (error against f_tgt) splits of one target task."""

    train: Split
    val: Split
    test: Split


def embedding_table(vocab: int, dim: int, seed: int) -> torch.Tensor:
    """Block-orthogonal fixed embeddings: tokens < vocab/2 on coordinates < dim/2, the rest on the others; E|e|^2 = dim."""
    z = torch.randn(vocab, dim, generator=torch.Generator().manual_seed(seed)) * 2 ** 0.5
    half_v, half_d = vocab // 2, dim // 2
    z[:half_v, half_d:] = 0.0
    z[half_v:, :half_d] = 0.0
    return z


def token_range(vocab: int, which: str) -> tuple[int, int]:
    """Token ids of the 'all', 'A' (lower half) or 'B' (upper half) input distribution."""
    return {"all": (0, vocab), "A": (0, vocab // 2), "B": (vocab // 2, vocab)}[which]


def sequences(n: int, seq_len: int, vocab: int, which: str, gen: torch.Generator) -> torch.Tensor:
    """Seeded random token sequences for the synthetic lab tasks."""
    lo, hi = token_range(vocab, which)
    return torch.randint(lo, hi, (n, seq_len), generator=gen)


class Teacher:
    """A standardised teacher function x -> (net(x) - mu) / sd, evaluated without gradients in float64."""

    def __init__(self, net: ReferenceTransformer, ref_ids: torch.Tensor) -> None:
        self.net = net.double().eval()
        self.mu, self.sd = 0.0, 1.0
        raw = self(ref_ids)
        self.mu, self.sd = float(raw.mean()), float(raw.std())

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = (self.net(ids).squeeze(-1) - self.mu) / self.sd
        return out

    def shifted(self, shift: float, seed: int, ref_ids: torch.Tensor) -> Teacher:
        """The same teacher with each weight tensor moved by shift * std(tensor) * N(0, 1) noise."""
        net = copy.deepcopy(self.net)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in net.parameters():
                sd = float(p.std()) if p.numel() > 1 else 0.0
                p.add_(shift * sd * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        return Teacher(net, ref_ids)


def make_teacher(vocab: int, embed_dim: int, seq_len: int, width: int, qk: float, seed: int,
                 emb: torch.Tensor) -> Teacher:
    """A seeded teacher reference transformer that defines a synthetic task."""
    spec = RefSpec(width=width, heads=2, vocab=vocab, embed_dim=embed_dim, sigma_q=qk, sigma_k=qk, sigma_b=0.1)
    ref = sequences(4096, seq_len, vocab, "all", torch.Generator().manual_seed(seed + 7))
    return Teacher(ReferenceTransformer(spec, seed=seed, embedding=emb), ref)


def labelled(fn: Teacher, ids: torch.Tensor, noise: float, gen: torch.Generator) -> Split:
    """Inputs labelled by a teacher plus Gaussian noise."""
    f = fn(ids)
    return Split(ids, f, f + noise * torch.randn(f.shape, generator=gen, dtype=torch.float64))


def fingerprint(*splits: Split) -> str:
    """sha256 of the ids and labels of the given splits: part of every run's resume key."""
    h = hashlib.sha256()
    for s in splits:
        h.update(s.ids.numpy().tobytes())
        h.update(s.y.numpy().tobytes())
    return h.hexdigest()
