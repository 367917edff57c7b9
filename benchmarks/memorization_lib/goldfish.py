"""Goldfish loss (Hans et al., NeurIPS 2024): leave 1/k of the target tokens out of the loss.

A target token is left out when a hash of the ``h`` tokens before it falls in one bucket of
``k``. The hash depends only on that local context, so a sequence repeated many times has the
same positions left out at every repetition, and the model never trains on those tokens of
it: a verbatim copy of a long passage cannot be learned, while language statistics, shared by
many contexts, still are. Positions with fewer than ``h`` tokens before them are always kept
(they have no full context to hash). Hans et al. use k=4, h=13.

This baseline belongs to the benchmark rather than to ``memsinks``: it is one of the
alternatives the benchmark compares against, not part of the product.
"""

from __future__ import annotations

import hashlib

import torch


def _context_hash(context: list[int]) -> int:
    """A 64-bit hash of a token context, stable across processes (unlike Python's ``hash``)."""
    data = b"".join(int(t).to_bytes(8, "little", signed=True) for t in context)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def goldfish_drop_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int = 4, h: int = 13) -> torch.Tensor:
    """Which target positions the goldfish loss leaves out.

    Args:
        input_ids: int (B, T) token IDs, right-padded.
        attention_mask: int (B, T), 1 on real tokens.
    Returns:
        bool (B, T): True at position ``t`` when ``t >= h``, the token is real, and the hash of
        ``input_ids[b, t-h:t]`` is 0 modulo ``k``.
    """
    if k < 2:
        raise ValueError(f"goldfish k must be >= 2 (k=1 would drop every token); got {k}.")
    if h < 1:
        raise ValueError(f"goldfish h (context length of the hash) must be >= 1; got {h}.")
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(f"input_ids and attention_mask must both be (B, T); got {tuple(input_ids.shape)} and "
                         f"{tuple(attention_mask.shape)}.")
    ids = input_ids.tolist()
    real = attention_mask.bool().tolist()
    drop = torch.zeros(input_ids.shape, dtype=torch.bool)
    for b, row in enumerate(ids):
        for t in range(h, len(row)):
            if real[b][t] and all(real[b][t - h:t]) and _context_hash(row[t - h:t]) % k == 0:
                drop[b, t] = True
    return drop


class GoldfishCollator:
    """Wraps a causal-LM data collator and sets the goldfish-dropped labels to -100.

    The inner collator must return ``input_ids``, ``attention_mask`` and ``labels`` (B, T);
    ``labels[b, t]`` is the target of position ``t`` (transformers shifts inside the model).
    """

    def __init__(self, collator, k: int = 4, h: int = 13):
        self.collator = collator
        self.k = k
        self.h = h

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collator(features)
        drop = goldfish_drop_mask(batch["input_ids"], batch["attention_mask"], self.k, self.h)
        batch["labels"] = batch["labels"].masked_fill(drop.to(batch["labels"].device), -100)
        return batch
