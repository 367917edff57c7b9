"""Checks and plumbing shared by the probes: devices, padding, sequence IDs, batching."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from memsinks.data import content_id
from memsinks.model import get_router, has_sinks
from memsinks.probes.inputs import sequence_id, token_list


def device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def resolve_pad_token_id(model: nn.Module, pad_token_id: int | None) -> int:
    """``pad_token_id`` if given, else the model's pad, else its EOS, else 0 (padding is masked anyway)."""
    if pad_token_id is not None:
        return int(pad_token_id)
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(source, name, None)
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if value is not None:
                return int(value)
    return 0


def sinks_mode_in_force(model: nn.Module) -> str | None:
    """The sinks mode an eval forward of ``model`` runs in, or None for a model without sinks."""
    if not has_sinks(model):
        return None
    return get_router(model).resolve_mode(training=False)[0]


def resolve_sequence_ids(
    model: nn.Module, sequences: Sequence[Sequence[int]], sequence_ids: Sequence[int] | None
) -> list[int] | None:
    """The IDs to pass to the model: the given ones, else content IDs when the model routes by ID.

    In ``own`` mode a model with sinks needs one ID per sequence; by default each sequence gets
    ``memsinks.content_id`` of its full token list, the ID ``assign_sequence_ids`` gave it in
    training. In the other modes no IDs are passed unless given (``exclude`` means something
    else with IDs than without). A model without sinks takes no IDs, so given ones are dropped
    (a probe set's IDs then simply do not matter).
    """
    if not has_sinks(model):
        return None
    if sequence_ids is not None:
        ids = sequence_id_list(sequence_ids, "sequence_ids")
        if len(ids) != len(sequences):
            raise ValueError(f"Got {len(ids)} sequence IDs for {len(sequences)} sequences; give one ID per sequence.")
        return ids
    if sinks_mode_in_force(model) == "own":
        return [content_id(list(s)) for s in sequences]
    return None


def as_token_lists(sequences: Sequence[Sequence[int]], what: str) -> list[list[int]]:
    """Check that ``sequences`` is a non-empty list of token-ID lists and return plain int lists."""
    if isinstance(sequences, (str, bytes)) or not hasattr(sequences, "__len__"):
        raise TypeError(f"{what} must be a list of token-ID lists; got {type(sequences).__name__}.")
    if len(sequences) == 0:
        raise ValueError(f"{what} is empty: give at least one sequence.")
    out = []
    for i, seq in enumerate(sequences):
        if isinstance(seq, str):
            raise TypeError(
                f"{what}[{i}] is a string; the probes take token-ID lists. Tokenize first "
                "(memsinks.probes.inputs.tokenize_sequences) or use the callbacks, which accept text."
            )
        out.append(token_list(seq, f"{what}[{i}]"))
    return out


def sequence_id_list(ids: Sequence, what: str) -> list[int]:
    """``ids`` as a list of sequence IDs, each checked as given (never cast); a ValueError names the bad one."""
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__len__"):
        raise TypeError(f"{what} must be a list of sequence IDs (ints); got {type(ids).__name__}.")
    return [sequence_id(i, f"{what}[{n}]") for n, i in enumerate(ids)]


def vocabulary_size(model: nn.Module) -> int | None:
    """Rows of the model's input embedding (the token IDs it accepts), else its config's ``vocab_size``.

    Under DeepSpeed ZeRO-3 the local weight is an empty shard and ``ds_shape`` holds the full shape.
    """
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(emb, "weight", None)
    if weight is not None:
        shape = tuple(getattr(weight, "ds_shape", weight.shape))
        if len(shape) == 2 and shape[0] > 0:
            return int(shape[0])
    value = getattr(getattr(model, "config", None), "vocab_size", None)
    return value if isinstance(value, int) else None


def context_length(model: nn.Module) -> int | None:
    """The longest sequence the model's config allows (``n_positions`` / ``max_position_embeddings``), if stated."""
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            return value
    return None


def check_token_range(sequences: Sequence[Sequence[int]], vocab_size: int | None,
                      where: Callable[[int], str]) -> None:
    """Raise a ValueError naming the first sequence (by ``where(i)``) with a token ID outside the vocabulary.

    An out-of-range ID would otherwise fail deep inside the model's embedding (an IndexError
    mid-training, or after an export was written).
    """
    if vocab_size is None:
        return
    for i, seq in enumerate(sequences):
        if len(seq) and max(seq) >= vocab_size:
            bad = next(t for t in seq if t >= vocab_size)
            raise ValueError(f"{where(i)}: token ID {bad} is outside the model's vocabulary ({vocab_size} tokens, IDs "
                             f"0..{vocab_size - 1}). Were these tokens made with another tokenizer?")


def check_fits_context(model: nn.Module, prefix_len: int, suffix_len: int) -> None:
    """Extraction feeds ``prefix_len + suffix_len - 1`` positions: raise if the model's context is shorter."""
    limit = context_length(model)
    if limit is not None and prefix_len + suffix_len - 1 > limit:
        raise ValueError(f"Extraction prompts with prefix_len={prefix_len} tokens and decodes suffix_len={suffix_len}, "
                         f"which needs {prefix_len + suffix_len - 1} positions, but the model's context is {limit} "
                         "tokens. Lower prefix_len / suffix_len.")


def check_min_length(sequences: Sequence[Sequence[int]], min_len: int, what: str, hint: str,
                     where: Callable[[int], str] | None = None) -> None:
    """Raise a ValueError naming how many sequences are shorter than ``min_len`` tokens, and the first
    (by ``where(i)``, e.g. its file and line; else its index)."""
    short = [i for i, s in enumerate(sequences) if len(s) < min_len]
    if short:
        shortest = min(len(sequences[i]) for i in short)
        first = where(short[0]) if where is not None else f"index {short[0]}"
        raise ValueError(
            f"{len(short)} of {len(sequences)} {what} are shorter than {min_len} tokens (the shortest has "
            f"{shortest}; the first is {first}). {hint}"
        )


def check_same_vocabulary(model: nn.Module, reference: nn.Module) -> None:
    """Raise unless the two models score the same token IDs (same vocabulary size).

    A likelihood ratio between models with different tokenizers compares unrelated numbers;
    the CLI and callbacks also compare the tokenizers themselves (``check_same_tokenizer``).
    """
    sizes = []
    for m in (model, reference):
        emb = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
        size = emb.weight.shape[0] if emb is not None else getattr(getattr(m, "config", None), "vocab_size", None)
        sizes.append(size)
    if sizes[0] is None or sizes[1] is None or sizes[0] != sizes[1]:
        raise ValueError(
            f"The reference model's vocabulary ({sizes[1]} tokens) differs from the model's ({sizes[0]}): it uses "
            "another tokenizer, so their likelihoods of the same token IDs are not comparable. Use a reference "
            "with the same tokenizer (for example the base model before fine-tuning)."
        )


def check_same_tokenizer(tokenizer, reference_tokenizer) -> None:
    """Raise unless two tokenizers map the same strings to the same IDs (equal vocabularies)."""
    if tokenizer is None or reference_tokenizer is None:
        return
    if tokenizer.get_vocab() != reference_tokenizer.get_vocab():
        raise ValueError(
            "The reference model's tokenizer differs from the model's (their vocabularies are not the same), so "
            "the same text becomes different token IDs and the likelihood ratio is meaningless. Use a reference "
            "model with the same tokenizer."
        )


def check_finite(values: dict, what: str) -> None:
    """Raise if any value is NaN or infinite, naming it: a probe never reports NaN."""
    bad = [k for k, v in values.items() if v is not None and not np.all(np.isfinite(v))]
    if bad:
        raise FloatingPointError(
            f"{what}: non-finite values in {bad}. The model produced NaN/inf logits (diverged training or an "
            "overflowing dtype); check the model before probing it."
        )


def batch_starts(n: int, batch_size: int, progress: bool, desc: str) -> Iterator[int]:
    """Start offsets of consecutive batches, with a tqdm bar (in sequences) when ``progress``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    starts = range(0, n, batch_size)
    if not progress:
        yield from starts
        return
    from tqdm.auto import tqdm

    with tqdm(total=n, desc=desc, unit="seq", leave=False) as bar:
        for start in starts:
            yield start
            bar.update(min(batch_size, n - start))


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` and ``torch.no_grad()`` inside the block; the training flag is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
