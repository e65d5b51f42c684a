"""Tokenise task rows for decoder and encoder backbones.

Pairs: encoders use the tokenizer's own pair encoding ([CLS] a [SEP] b [SEP]); decoders use the
fixed template ``PAIR_TEMPLATE``. Truncation is longest-first over the two sentences, so both
sentences survive; decoders are left-padded, encoders right-padded (the readout handles both).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from .data import TaskData

PAIR_TEMPLATE = ("Sentence 1: ", "\nSentence 2: ", "")  # prefix, separator, suffix around (a, b)


def _trim_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    a, b = list(a), list(b)
    while len(a) + len(b) > budget and (a or b):
        if len(a) >= len(b):
            a.pop()
        else:
            b.pop()
    return a, b


def encode(tokenizer: Any, kind: str, data: TaskData | list[str], max_length: int = 128,
           text_b: list[str] | None = None) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask (B, T) with T = the longest row after truncation to max_length."""
    if max_length < 4:
        raise ConfigError(f"--max-length must be >= 4, got {max_length}")
    a_texts = data.text_a if isinstance(data, TaskData) else list(data)
    b_texts = data.text_b if isinstance(data, TaskData) else text_b
    if not a_texts:
        raise ConfigError("nothing to encode: the sample set is empty")
    if kind == "encoder":
        enc = tokenizer(a_texts, b_texts, truncation="longest_first" if b_texts else True, max_length=max_length,
                        padding="longest", return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    seqs = []
    pre, sep, suf = (tokenizer(p, add_special_tokens=False)["input_ids"] for p in PAIR_TEMPLATE)
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token_id is not None else []
    for i, a in enumerate(a_texts):
        ids_a = tokenizer(a, add_special_tokens=False)["input_ids"]
        if b_texts is None:
            seqs.append(bos + ids_a[: max_length - len(bos)])
            continue
        ids_b = tokenizer(b_texts[i], add_special_tokens=False)["input_ids"]
        fixed = len(bos) + len(pre) + len(sep) + len(suf)
        ids_a, ids_b = _trim_pair(ids_a, ids_b, max_length - fixed)
        seqs.append(bos + pre + ids_a + sep + ids_b + suf)
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    left = tokenizer.padding_side == "left"
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
    return {"input_ids": ids, "attention_mask": mask}
