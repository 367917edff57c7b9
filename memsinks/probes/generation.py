"""Continuations of token prefixes: batched ``generate()`` with left padding and the KV cache.

``generate_continuations`` is what the probes use; ``generate_from_embeddings`` does the same
for rows of input vectors (soft prompts before a prefix, as in the DSP attack).
``greedy_continuations_uncached`` is the specification both must equal token for token: one
sequence at a time, the full forward at every step, no cache, no padding (tests and
``benchmarks/probe_speed.py`` compare them).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from memsinks.probes._common import (
    as_token_lists, batch_starts, device_of, eval_mode, resolve_pad_token_id, resolve_sequence_ids,
)
from memsinks.unwrap import unwrap_model


def _left_padded(chunk: list[list[int]], pad_token_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) input IDs and attention mask, each row right-aligned (padding on the left)."""
    T = max(len(s) for s in chunk)
    ids = torch.full((len(chunk), T), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(chunk), T), dtype=torch.long)
    for i, s in enumerate(chunk):
        ids[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, T - len(s):] = 1
    return ids.to(device), mask.to(device)


def _left_padded_rows(rows: list[torch.Tensor], positions: list[list[int]] | None, device: torch.device):
    """(B, T, d) vectors with zero vectors on the left, the (B, T) attention mask and, if given, (B, T) positions
    (0 on the padding)."""
    T = max(r.shape[0] for r in rows)
    embeds = rows[0].new_zeros((len(rows), T, rows[0].shape[-1]))
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    pos = torch.zeros((len(rows), T), dtype=torch.long) if positions is not None else None
    for i, r in enumerate(rows):
        embeds[i, T - r.shape[0]:] = r
        mask[i, T - r.shape[0]:] = 1
        if pos is not None:
            pos[i, T - r.shape[0]:] = torch.tensor(positions[i], dtype=torch.long)
    return embeds.to(device), mask.to(device), None if pos is None else pos.to(device)


def _generation_config(max_new_tokens: int, pad_token_id: int, num_samples: int, top_k: int):
    """Exactly ``max_new_tokens`` tokens per row: no EOS stop (an empty EOS list), greedy or top-k sampling.

    Built from scratch rather than from the model's ``generation_config``, whose extras (a
    repetition penalty, a minimum length, temperature) would change what the probe measures.
    """
    from transformers import GenerationConfig

    sampling = dict(do_sample=True, num_return_sequences=num_samples, top_k=top_k, top_p=1.0, temperature=1.0)
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=[],  # None would fall back to the model's EOS; the probes compare fixed-length suffixes
        pad_token_id=pad_token_id,
        use_cache=True,
        num_beams=1,
        **(sampling if num_samples > 0 else dict(do_sample=False)),
    )


@contextlib.contextmanager
def _only_generation_config(model: nn.Module, config) -> Iterator[None]:
    """Make ``config`` the model's ``generation_config`` inside the block.

    ``generate()`` fills every field left unset in the config it is given from the model's own
    ``generation_config``; swapping it keeps a checkpoint's decoding extras out of the probe.
    """
    saved = model.__dict__.get("generation_config", None)
    had = "generation_config" in model.__dict__
    model.generation_config = config
    try:
        yield
    finally:
        if had:
            model.generation_config = saved
        else:
            del model.generation_config


def generate_continuations(
    model: nn.Module,
    prefixes: Sequence[Sequence[int]],
    max_new_tokens: int,
    sequence_ids: Sequence[int] | None = None,
    batch_size: int = 32,
    pad_token_id: int | None = None,
    num_samples: int = 0,
    top_k: int = 40,
    seed: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Decode ``max_new_tokens`` tokens after each prefix with the model's ``generate()``.

    Prefixes are batched with left padding and decoded with the KV cache; decoding never stops
    early at EOS. Greedy by default; with ``num_samples > 0``, that many top-k samples per
    prefix, drawn from a private RNG stream seeded with ``seed`` (the caller's RNG state is
    left as it was, so probing during training does not change the training run).

    Args:
        prefixes: token-ID lists (any lengths).
        sequence_ids: one ID per prefix for a model with sinks; in ``own`` mode they are
            required, and default to ``memsinks.content_id`` of each prefix (pass the full
            sequences' IDs, as ``extraction`` does).
    Returns:
        int64 array (N, max_new_tokens), or (N, num_samples, max_new_tokens) when sampling.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}.")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0; got {num_samples}.")
    prefixes = as_token_lists(prefixes, "prefixes")
    if any(len(p) == 0 for p in prefixes):
        raise ValueError("Every prefix needs at least one token to condition on.")
    model = unwrap_model(model)
    if not hasattr(model, "generate"):
        raise TypeError(f"{type(model).__name__} has no generate(); pass a transformers causal LM.")
    pad = resolve_pad_token_id(model, pad_token_id)
    ids = resolve_sequence_ids(model, prefixes, sequence_ids)
    config = _generation_config(max_new_tokens, pad, num_samples, top_k)
    device = device_of(model)
    rows = max(1, num_samples)
    out = np.zeros((len(prefixes), rows, max_new_tokens), dtype=np.int64)
    devices = [device] if device.type == "cuda" else []
    with eval_mode(model), _only_generation_config(model, config), \
            torch.random.fork_rng(devices=devices, enabled=num_samples > 0):
        if num_samples > 0:
            torch.manual_seed(seed)
        for start in batch_starts(len(prefixes), batch_size, progress, "generating"):
            chunk = prefixes[start:start + batch_size]
            input_ids, mask = _left_padded(chunk, pad, device)
            new = _generate(model, config, None if ids is None else ids[start:start + batch_size],
                            input_ids=input_ids, attention_mask=mask)[:, input_ids.shape[1]:]
            out[start:start + len(chunk)] = new.cpu().numpy().reshape(len(chunk), rows, max_new_tokens)
    return out if num_samples > 0 else out[:, 0]


def generate_from_embeddings(
    model: nn.Module,
    rows: Sequence[torch.Tensor],
    max_new_tokens: int,
    sequence_ids: Sequence[int] | None = None,
    positions: Sequence[Sequence[int]] | None = None,
) -> np.ndarray:
    """Greedy continuations of rows of input vectors, batched with left padding and the KV cache.

    Args:
        rows: one (T_i, d) tensor per row in the model's input-embedding space (any lengths).
        sequence_ids: one ID per row for a model with sinks (required in ``own`` mode; no default).
        positions: one list of T_i position IDs per row (default 0..T_i-1); the continuation goes
            on from each row's last position.
    Returns:
        int64 array (N, max_new_tokens); decoding never stops early at EOS.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}.")
    if positions is not None and [len(p) for p in positions] != [r.shape[0] for r in rows]:
        raise ValueError("positions must give one position ID per vector of each row.")
    model = unwrap_model(model)
    device = device_of(model)
    config = _generation_config(max_new_tokens, resolve_pad_token_id(model, None), 0, 0)
    embeds, mask, pos = _left_padded_rows(list(rows), None if positions is None else list(positions), device)
    with eval_mode(model), _only_generation_config(model, config):
        new = _generate(model, config, sequence_ids, inputs_embeds=embeds, attention_mask=mask, position_ids=pos)
    return new.cpu().numpy()


def _generate(model: nn.Module, config, sequence_ids: Sequence[int] | None, **inputs) -> torch.Tensor:
    """``model.generate`` on a prepared batch (``inputs``: IDs or vectors, the mask, positions if any)."""
    kwargs = {k: v for k, v in inputs.items() if v is not None}
    if sequence_ids is not None:
        device = kwargs["attention_mask"].device
        kwargs["sequence_ids"] = torch.tensor(list(sequence_ids), dtype=torch.long, device=device)
    return model.generate(generation_config=config, **kwargs)


def greedy_continuations_uncached(
    model: nn.Module,
    prefixes: Sequence[Sequence[int]],
    max_new_tokens: int,
    sequence_ids: Sequence[int] | None = None,
) -> np.ndarray:
    """The reference greedy decoder: per prefix, ``max_new_tokens`` full forwards without cache or padding.

    Returns int64 (N, max_new_tokens). Slow by design; it defines what the batched path computes.
    """
    prefixes = as_token_lists(prefixes, "prefixes")
    model = unwrap_model(model)
    ids = resolve_sequence_ids(model, prefixes, sequence_ids)
    device = device_of(model)
    out = np.zeros((len(prefixes), max_new_tokens), dtype=np.int64)
    with eval_mode(model):
        for i, prefix in enumerate(prefixes):
            seq = torch.tensor([prefix], dtype=torch.long, device=device)
            kwargs = {}
            if ids is not None:
                kwargs["sequence_ids"] = torch.tensor([ids[i]], dtype=torch.long, device=device)
            for _ in range(max_new_tokens):
                logits = model(input_ids=seq, use_cache=False, **kwargs).logits
                nxt = logits[:, -1].argmax(dim=-1, keepdim=True)
                seq = torch.cat([seq, nxt], dim=1)
            out[i] = seq[0, len(prefix):].cpu().numpy()
    return out
