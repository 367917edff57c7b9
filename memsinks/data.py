"""Sequence IDs for datasets, and the data collator that carries them into the batch.

A sequence ID is a positive 63-bit int. ``assign_sequence_ids`` derives it from the tokens'
content (so exact duplicates share an ID and their memorization collects in the same sinks)
or from a column naming the document, author or source. The hash is blake2b, stable across
processes, machines and ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from memsinks.ids import check_sequence_ids, strict_int_tensor, validate_sequence_id

SEQUENCE_IDS = "sequence_ids"
PRIVATE_MASK = "private_mask"
_ID_MASK = (1 << 63) - 1
TOKEN_ID_HINT = "token IDs are ints (a tokenizer's output); floats, bools and strings are never cast to them."


def _digest_to_id(data: bytes) -> int:
    value = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & _ID_MASK
    return value or 1  # 0 is reserved for "no sinks"


def content_id(token_ids: Sequence[int] | np.ndarray | torch.Tensor) -> int:
    """The sequence ID of a token sequence: a hash of its tokens (pad them out first)."""
    if isinstance(token_ids, torch.Tensor):
        token_ids = token_ids.detach().cpu()
    arr = strict_int_tensor(token_ids, "content_id: token_ids", TOKEN_ID_HINT).numpy()
    if arr.ndim != 1:
        raise ValueError(f"content_id hashes one sequence of token IDs; got an array of shape {arr.shape}.")
    return _digest_to_id(b"tokens:" + arr.astype("<i8").tobytes())


def key_id(value: Any) -> int:
    """The sequence ID of a document / author / source key (a str or an int)."""
    if isinstance(value, (bool, float)) or value is None:
        raise TypeError(f"ID keys are str or int (a document, author or source name); got {value!r}.")
    if isinstance(value, (int, np.integer)):
        return _digest_to_id(b"int:" + str(int(value)).encode())
    if isinstance(value, str):
        return _digest_to_id(b"str:" + value.encode("utf-8"))
    raise TypeError(f"ID keys are str or int; got {type(value).__name__}.")


def assign_sequence_ids(
    dataset,
    from_column: str | None = None,
    tokens_column: str = "input_ids",
    column: str = SEQUENCE_IDS,
    num_proc: int | None = None,
):
    """Add an int column ``sequence_ids`` to a ``datasets.Dataset`` (or each split of a ``DatasetDict``).

    Without ``from_column`` the ID hashes the tokens of ``tokens_column`` (content ID; exact
    duplicates share it). With ``from_column="doc_id"`` every row of a document, author or
    source gets the same ID (``key_id`` of that column's value), which is what user-level
    sinks and user-level DP need. The column keeps the forward argument's name, so the stock
    Trainer's ``remove_unused_columns`` keeps it.
    """
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        empty = [name for name, split in dataset.items() if len(split) == 0]
        if empty:
            raise ValueError(f"The dataset's split(s) {empty} are empty (0 rows); remove them or fill them first.")
        return datasets.DatasetDict(
            {k: assign_sequence_ids(v, from_column, tokens_column, column, num_proc) for k, v in dataset.items()}
        )
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"assign_sequence_ids takes a datasets.Dataset or DatasetDict; got {type(dataset).__name__}.")
    if len(dataset) == 0:
        raise ValueError(
            "The dataset is empty (0 rows): there is nothing to give sequence IDs to or to train on. Check the "
            "loading, filtering and tokenization that produced it."
        )
    source = from_column or tokens_column
    if source not in dataset.column_names:
        what = "ID column" if from_column else "token column (tokenize first, or name another with tokens_column=)"
        raise KeyError(f"The dataset has no {what} {source!r}; its columns are {dataset.column_names}.")
    if column in dataset.column_names:
        raise ValueError(f"The dataset already has a {column!r} column; remove it first or pick another column name.")

    dtype = _value_dtype(dataset.features[source])
    if dtype is not None and (dtype.startswith("float") or dtype == "bool"):
        what = "ID keys (str or int)" if from_column else "token IDs (ints)"
        raise TypeError(f"Column {source!r} holds {dtype} values, but it must hold {what}; memsinks never casts them.")
    hasher = key_id if from_column else content_id

    def _ids(batch: dict, indices: list[int]) -> dict:
        out = []
        for row, value in zip(indices, batch[source]):
            try:
                out.append(hasher(value))
            except (TypeError, ValueError) as err:
                raise type(err)(f"Row {row}, column {source!r}: {err}") from None
        return {column: out}

    features = dataset.features.copy()
    features[column] = datasets.Value("int64")
    return dataset.map(_ids, batched=True, with_indices=True, num_proc=num_proc, features=features,
                       desc="Assigning sequence IDs")


def _value_dtype(feature: Any) -> str | None:
    """The dtype of the scalars inside a ``datasets`` feature (a Value, or a Sequence/List of them)."""
    while feature is not None and not hasattr(feature, "dtype"):
        feature = getattr(feature, "feature", None)
    return getattr(feature, "dtype", None)


class SinksDataCollator:
    """Pads a list of tokenized examples into a causal-LM batch and carries their sequence IDs.

    Each feature has ``input_ids`` (and optionally ``attention_mask``, ``labels``) and
    ``sequence_ids``: an int (one ID per sequence, giving a (B,) tensor) or a list as long
    as ``input_ids`` (per-token IDs of packed rows, giving (B, T) padded with 0). Labels
    default to the inputs with padding set to -100 (decided by the attention mask, so a real
    EOS token equal to the pad token still counts).
    """

    def __init__(self, tokenizer=None, pad_to_multiple_of: int | None = None, require_ids: bool = True):
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of
        self.require_ids = require_ids

    def _pad_id(self) -> int:
        tok = self.tokenizer
        if tok is None:
            return 0
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise ValueError("The tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token.")
        return pad

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("SinksDataCollator got an empty list of features.")
        lengths = [len(f["input_ids"]) for f in features]
        T = max(lengths)
        if self.pad_to_multiple_of:
            T = -(-T // self.pad_to_multiple_of) * self.pad_to_multiple_of
        B = len(features)
        left = self.tokenizer is not None and getattr(self.tokenizer, "padding_side", "right") == "left"
        input_ids = torch.full((B, T), self._pad_id(), dtype=torch.long)
        attention = torch.zeros((B, T), dtype=torch.long)
        labels = torch.full((B, T), -100, dtype=torch.long)
        for i, f in enumerate(features):
            n = lengths[i]
            sl = slice(T - n, T) if left else slice(0, n)
            input_ids[i, sl] = _ints(f["input_ids"], f"feature {i}: input_ids", n)
            am = _ints(f["attention_mask"], f"feature {i}: attention_mask", n) if "attention_mask" in f else torch.ones(n, dtype=torch.long)
            attention[i, sl] = am
            if "labels" in f and f["labels"] is not None:
                labels[i, sl] = _ints(f["labels"], f"feature {i}: labels", n)
            else:
                labels[i, sl] = torch.where(am.bool(), input_ids[i, sl], torch.full_like(am, -100))
        batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        ids = self._collect_ids(features, lengths, T, left)
        if ids is not None:
            batch[SEQUENCE_IDS] = ids
        private = self._collect_private_mask(features, lengths, T, left)
        if private is not None:
            batch[PRIVATE_MASK] = private
        return batch

    def _collect_private_mask(self, features: list[dict], lengths: list[int], T: int, left: bool) -> torch.Tensor | None:
        """(B, T) 0/1 from each feature's ``private_mask`` (padding is 0), or None when no feature has one."""
        present = [f.get(PRIVATE_MASK) is not None for f in features]
        if not any(present):
            return None
        if not all(present):
            raise KeyError(f"Feature {present.index(False)} of the batch has no '{PRIVATE_MASK}' while others do; "
                           "mark every row (memsinks.mark_private_spans), with all zeros where nothing is private.")
        out = torch.zeros((len(features), T), dtype=torch.long)
        for i, f in enumerate(features):
            values = _as_list(f[PRIVATE_MASK])
            if not isinstance(values, list) or len(values) != lengths[i]:
                raise ValueError(f"Feature {i}: '{PRIVATE_MASK}' must be a list of 0/1 as long as its input_ids "
                                 f"({lengths[i]} tokens); got {type(values).__name__} of length "
                                 f"{len(values) if hasattr(values, '__len__') else 'n/a'}.")
            bad = [v for v in values if not _is_bit(v)]
            if bad:
                raise ValueError(f"Feature {i}: '{PRIVATE_MASK}' must hold only 0 and 1; it holds {bad[0]!r}.")
            sl = slice(T - lengths[i], T) if left else slice(0, lengths[i])
            out[i, sl] = torch.as_tensor([int(v) for v in values], dtype=torch.long)
        return out

    def _collect_ids(self, features: list[dict], lengths: list[int], T: int, left: bool) -> torch.Tensor | None:
        present = [SEQUENCE_IDS in f and f[SEQUENCE_IDS] is not None for f in features]
        if not any(present):
            if self.require_ids:
                raise KeyError(
                    "The batch has no 'sequence_ids'. Add them with memsinks.assign_sequence_ids(dataset), or "
                    "SinksDataCollator(require_ids=False) for a model without sinks."
                )
            return None
        if not all(present):
            missing = present.index(False)
            raise KeyError(f"Feature {missing} of the batch has no 'sequence_ids' while others do.")
        values = [_as_list(f[SEQUENCE_IDS]) for f in features]
        per_token = [isinstance(v, list) for v in values]
        if not any(per_token):
            return torch.tensor([validate_sequence_id(v, f"feature {i}: sequence_ids") for i, v in enumerate(values)],
                                dtype=torch.long)
        if not all(per_token):
            raise ValueError("Mixing per-sequence (int) and per-token (list) sequence_ids in one batch.")
        out = torch.zeros((len(values), T), dtype=torch.long)
        for i, v in enumerate(values):
            if len(v) != lengths[i]:
                raise ValueError(f"Feature {i}: per-token sequence_ids has {len(v)} entries for {lengths[i]} tokens.")
            sl = slice(T - lengths[i], T) if left else slice(0, lengths[i])
            what = f"feature {i}: sequence_ids"
            out[i, sl] = check_sequence_ids(strict_int_tensor(v, what), what)
        return out


def _is_bit(value: Any) -> bool:
    """0 or 1 as an int or a bool (a float 1.0 is not a bit: values are never cast)."""
    if isinstance(value, (bool, np.bool_)):
        return True
    return isinstance(value, (int, np.integer)) and value in (0, 1)


def _ints(values: Any, what: str, length: int) -> torch.Tensor:
    """One feature's token-level ints (input_ids, attention_mask, labels) as int64 (length,), never cast."""
    out = strict_int_tensor(values, what, TOKEN_ID_HINT)
    if out.dim() != 1 or out.shape[0] != length:
        raise ValueError(f"{what} has shape {tuple(out.shape)}; expected one int per token ({length},).")
    return out


def _as_list(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def chunk_tokens(token_ids: Iterable[int], length: int) -> list[list[int]]:
    """Split a token stream into consecutive windows of ``length`` tokens (the last partial one dropped)."""
    tokens = list(token_ids)
    return [tokens[i:i + length] for i in range(0, len(tokens) - length + 1, length)]
