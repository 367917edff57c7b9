"""Per-token and per-sequence negative log-likelihoods of token sequences under a causal LM."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def token_nlls(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    sequence_ids: Sequence[int] | None = None,
    batch_size: int = 32,
    pad_token_id: int = 0,
) -> list[np.ndarray]:
    """NLL (nats) of every token after the first, for each sequence.

    Args:
        sequences: token-ID lists (any lengths; batched with right padding).
        sequence_ids: one ID per sequence, passed to a model with sinks (needed in ``own`` mode).
    Returns:
        a list of float64 arrays, the i-th of length ``len(sequences[i]) - 1``.
    """
    if sequence_ids is not None and len(sequence_ids) != len(sequences):
        raise ValueError(f"{len(sequence_ids)} sequence_ids for {len(sequences)} sequences.")
    if any(len(s) < 2 for s in sequences):
        raise ValueError("Every sequence needs at least 2 tokens to score.")
    was_training = model.training
    model.eval()
    device = _device_of(model)
    out: list[np.ndarray] = []
    try:
        for start in range(0, len(sequences), batch_size):
            chunk = [list(s) for s in sequences[start:start + batch_size]]
            T = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), T), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), T), dtype=torch.long)
            for i, s in enumerate(chunk):
                ids[i, :len(s)] = torch.tensor(s)
                mask[i, :len(s)] = 1
            kwargs = {}
            if sequence_ids is not None:
                kwargs["sequence_ids"] = torch.tensor(list(sequence_ids[start:start + batch_size]), dtype=torch.long, device=device)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            nll = -logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1).cpu().double().numpy()
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
    pad_token_id: int = 0,
) -> np.ndarray:
    """Mean token NLL of each sequence: float64 array (N,)."""
    return np.array([x.mean() for x in token_nlls(model, sequences, sequence_ids, batch_size, pad_token_id)])
