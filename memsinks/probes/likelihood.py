"""Per-token and per-sequence negative log-likelihoods of token sequences under a causal LM.

A sequence longer than the model's context (``n_positions`` / ``max_position_embeddings``) is
scored in context-sized windows that overlap by one token, so every token after the first is
scored exactly once, with the context of its own window (the loss a model of that context
assigns in a sliding evaluation without stride overlap). Long documents are normal input; this
is said once per process in the log.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from torch import nn

from memsinks.probes._common import batch_starts, check_token_range, context_length, device_of, vocabulary_size

logger = logging.getLogger("memsinks")
_said_windowed: set[int] = set()


def context_windows(sequence: Sequence[int], length: int | None) -> list[list[int]]:
    """``sequence`` cut into windows of at most ``length`` tokens, each starting on the previous one's last token."""
    sequence = list(sequence)
    if length is None or len(sequence) <= length:
        return [sequence]
    return [sequence[start:start + length] for start in range(0, len(sequence) - 1, length - 1)]


def _say_windowed(n_long: int, length: int) -> None:
    if length not in _said_windowed:
        _said_windowed.add(length)
        logger.warning("memsinks: %d sequence(s) are longer than the model's %d-token context; they are scored in "
                       "%d-token windows (said once).", n_long, length, length)


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
        sequences: token-ID lists (any lengths; batched with right padding; longer than the
            model's context: scored in windows, see the module docstring).
        sequence_ids: one ID per sequence, passed to a model with sinks (needed in ``own`` mode;
            every window of a sequence is routed by its ID).
        pad_token_id: the ID right padding is filled with (masked, so any ID works; None means 0).
        progress: show a tqdm bar over the (windowed) sequences.
    Returns:
        a list of float64 arrays, the i-th of length ``len(sequences[i]) - 1``.
    """
    if sequence_ids is not None and len(sequence_ids) != len(sequences):
        raise ValueError(f"{len(sequence_ids)} sequence_ids for {len(sequences)} sequences.")
    if any(len(s) < 2 for s in sequences):
        raise ValueError("Every sequence needs at least 2 tokens to score.")
    check_token_range(sequences, vocabulary_size(model), lambda i: f"sequence {i}")
    limit = context_length(model)
    windows, owner = [], []
    for i, s in enumerate(sequences):
        for w in context_windows(s, limit):
            windows.append(w)
            owner.append(i)
    if len(windows) > len(sequences):
        _say_windowed(sum(len(s) > limit for s in sequences), limit)
    window_ids = None if sequence_ids is None else [sequence_ids[i] for i in owner]
    parts = _window_nlls(model, windows, window_ids, batch_size, pad_token_id, progress)
    out: list[list[np.ndarray]] = [[] for _ in sequences]
    for i, nll in zip(owner, parts):
        out[i].append(nll)
    return [p[0] if len(p) == 1 else np.concatenate(p) for p in out]


def _window_nlls(model: nn.Module, sequences: list[list[int]], sequence_ids: list[int] | None, batch_size: int,
                 pad_token_id: int | None, progress: bool) -> list[np.ndarray]:
    """NLLs of sequences that fit the model's context, batched with right padding."""
    was_training = model.training
    model.eval()
    device = device_of(model)
    out: list[np.ndarray] = []
    try:
        for start in batch_starts(len(sequences), batch_size, progress, "scoring"):
            chunk = sequences[start:start + batch_size]
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
