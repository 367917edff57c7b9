"""What a sequence ID is, and how integer IDs (sequence IDs, token IDs) are read without a silent cast.

A sequence ID is an int in [0, 2**63): 0 means "no sinks"; every other ID switches on its own
units. IDs are checked, never cast: a float cannot hold every 63-bit int, so a float ID (even an
integral one such as 3.0) is refused rather than rounded to a different ID with a different
routing; so are bools, strings and values outside the range. Errors name the first offending
element, e.g. ``sequence_ids[3] = 1.5 is a float``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

MAX_SEQUENCE_ID = (1 << 63) - 1
_INT64_MIN = -(1 << 63)
SEQUENCE_ID_HINT = (
    "sequence IDs are ints in [0, 2**63) and are never rounded or parsed; build them with "
    "memsinks.assign_sequence_ids (or memsinks.content_id / memsinks.key_id)."
)


def validate_sequence_id(value: Any, what: str = "sequence id") -> int:
    """Check that ``value`` is a valid sequence ID (an int in [0, 2**63)) and return it as int."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, np.integer):
            value = int(value)
        else:
            raise TypeError(f"{what}: sequence IDs are ints in [0, 2**63); got {value!r} of type {type(value).__name__}.")
    if not 0 <= value <= MAX_SEQUENCE_ID:
        raise ValueError(f"{what}: sequence IDs are ints in [0, 2**63); got {value}.")
    return value


def _element(index: tuple[int, ...]) -> str:
    return "".join(f"[{i}]" for i in index)


def _describe(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "a bool"
    if isinstance(value, (float, np.floating)):
        return "a float"
    if value is None:
        return "missing (None)"
    return f"a {type(value).__name__}"


def _check_python(values: Any, what: str, hint: str, index: tuple[int, ...] = ()) -> None:
    """Raise on the first element of a (nested) list that is not an exact int in the int64 range."""
    if isinstance(values, (list, tuple)):
        if all(type(v) is int for v in values):  # the common case, checked without recursion
            if values and (min(values) < _INT64_MIN or max(values) > MAX_SEQUENCE_ID):
                at = next(i for i, v in enumerate(values) if not _INT64_MIN <= v <= MAX_SEQUENCE_ID)
                raise ValueError(f"{what}{_element(index + (at,))} = {values[at]} is outside the int64 range; {hint}")
            return
        for i, v in enumerate(values):
            _check_python(v, what, hint, index + (i,))
        return
    if isinstance(values, (np.ndarray, torch.Tensor)):
        _check_python(values.tolist(), what, hint, index)
        return
    if isinstance(values, (int, np.integer)) and not isinstance(values, (bool, np.bool_)):
        if not _INT64_MIN <= int(values) <= MAX_SEQUENCE_ID:
            raise ValueError(f"{what}{_element(index)} = {int(values)} is outside the int64 range; {hint}")
        return
    raise TypeError(f"{what}{_element(index)} = {values!r} is {_describe(values)}; {hint}")


def strict_int_tensor(values: Any, what: str, hint: str = SEQUENCE_ID_HINT) -> torch.Tensor:
    """``values`` (a tensor, numpy array, int or nested list of ints) as an int64 tensor, or an error.

    Only conversions that cannot change a value are made (int8..int64, uint8..uint32 to int64).
    Refused with a TypeError: bool, float (integral or not), complex and string values, and float
    or bool tensors/arrays; with a ValueError: values outside the int64 range. A tensor keeps its
    device; an int64 tensor is returned as it is.
    """
    if isinstance(values, torch.Tensor):
        if values.dtype == torch.int64:
            return values
        if values.dtype in (torch.bool, torch.uint64) or values.is_floating_point() or values.is_complex():
            first = values.flatten()[0].item() if values.numel() else None
            raise TypeError(
                f"{what} has dtype {values.dtype} (first value {first!r}): only int64-compatible integer tensors "
                f"are accepted, since a cast could change an ID; {hint}")
        return values.to(torch.int64)
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        if values.dtype == np.uint64 and values.size and int(values.max()) > MAX_SEQUENCE_ID:
            at = np.unravel_index(int(np.argmax(values > MAX_SEQUENCE_ID)), values.shape)
            raise ValueError(f"{what}{_element(at)} = {int(values[at])} is outside the int64 range; {hint}")
        return torch.from_numpy(values.astype(np.int64))
    if isinstance(values, np.ndarray) and values.dtype.kind != "O":
        first = values.flat[0].item() if values.size else None
        raise TypeError(f"{what} is a numpy array of dtype {values.dtype} (first value {first!r}); {hint}")
    _check_python(values, what, hint)
    try:
        return torch.tensor(values.tolist() if isinstance(values, np.ndarray) else values, dtype=torch.int64)
    except (ValueError, TypeError, RuntimeError) as err:
        raise ValueError(f"{what} is not a rectangular list of ints ({err}); {hint}") from None


def check_sequence_ids(ids: torch.Tensor, what: str = "sequence_ids") -> torch.Tensor:
    """Raise unless every element of the int64 tensor ``ids`` is a sequence ID (non-negative); returns ``ids``."""
    if ids.numel() and bool((ids < 0).any()):
        at = tuple(int(i) for i in (ids < 0).nonzero()[0])
        raise ValueError(f"{what}{_element(at)} = {int(ids[at])} is negative; 0 means 'no sinks', and {SEQUENCE_ID_HINT}")
    return ids


def normalize_sequence_ids(sequence_ids: Any, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    """Check a forward's sequence IDs and return them as int64: (B,) per sequence or (B, T) per token."""
    sequence_ids = strict_int_tensor(sequence_ids, "sequence_ids")
    if input_shape is not None:
        batch = input_shape[0]
        if sequence_ids.dim() == 1:
            ok = sequence_ids.shape[0] == batch
        elif sequence_ids.dim() == 2:
            ok = tuple(sequence_ids.shape) == tuple(input_shape[:2])
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"sequence_ids has shape {tuple(sequence_ids.shape)} but the input batch is {tuple(input_shape)}: "
                "give one ID per sequence (B,) or one per token (B, T). In generate(), use (B,)."
            )
    elif sequence_ids.dim() not in (1, 2):
        raise ValueError(f"sequence_ids must have shape (B,) or (B, T); got {tuple(sequence_ids.shape)}.")
    return check_sequence_ids(sequence_ids)
