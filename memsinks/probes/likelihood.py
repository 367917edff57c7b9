"""Per-token and per-sequence negative log-likelihoods of token sequences under a causal LM."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from memsinks.probes._common import batch_starts, device_of


@torch.no_grad()
def token_nlls(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    sequence_ids: Sequence[int] | None = None,
    batch_size: int = 32,
    pad_token_id: int | None = 0,
    progress: bool = False,
) -> list[np.ndarray]:
    """NLL (nats) of every token after the first, for each sequence.

    Args:
        sequences: token-ID lists (any lengths; batched with right padding).
        sequence_ids: one ID per sequence, passed to a model with sinks (needed in ``own`` mode).
        pad_token_id: the ID right padding is filled with (masked, so any ID works; None means 0).
        progress: show a tqdm bar over the sequences.
    Returns:
        a list of float64 arrays, the i-th of length ``len(sequences[i]) - 1``.
    """
    if sequence_ids is not None and len(sequence_ids) != len(sequences):
        raise ValueError(f"{len(sequence_ids)} sequence_ids for {len(sequences)} sequences.")
    if any(len(s) < 2 for s in sequences):
        raise ValueError("Every sequence needs at least 2 tokens to score.")
    was_training = model.training
    model.eval()
    device = device_of(model)
    out: list[np.ndarray] = []
    try:
        for start in batch_starts(len(sequences), batch_size, progress, "scoring"):
            chunk = [list(s) for s in sequences[start:start + batch_size]]
            T = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), T), pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros((len(chunk), T), dtype=torch.long)
            for i, s in enumerate(chunk):
                ids[i, :len(s)] = torch.tensor(s)
                mask[i, :len(s)] = 1
            kwargs = {}
            if sequence_ids is not None:
                chunk_ids = list(sequence_ids[start:start + batch_size])
                kwargs["sequence_ids"] = torch.tensor(chunk_ids, dtype=torch.long, device=device)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).logits
            targets = ids[:, 1:].to(device)
            nll = torch.nn.functional.cross_entropy(  # (B, T-1), without a second (B, T, V) buffer
                logits[:, :-1].float().flatten(0, 1), targets.flatten(), reduction="none",
            ).view(targets.shape).cpu().double().numpy()
            for i, s in enumerate(chunk):
                out.append(nll[i, :len(s) - 1].copy())
    finally:
        model.train(was_training)
    return out


def sequence_losses(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    sequence_ids: Sequence[int] | None = None,
    batch_size: int = 32,
    pad_token_id: int | None = 0,
    progress: bool = False,
) -> np.ndarray:
    """Mean token NLL of each sequence: float64 array (N,)."""
    nlls = token_nlls(model, sequences, sequence_ids, batch_size, pad_token_id, progress)
    return np.array([x.mean() for x in nlls])
