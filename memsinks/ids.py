"""What a sequence ID is: an int in [0, 2**63), checked one at a time or as a batch tensor.

0 means "no sinks"; every other ID switches on its own units. IDs are checked, never cast:
a float cannot hold every 63-bit int, so a float ID (even an integral one) is refused rather
than rounded to a different ID with a different routing.
"""

from __future__ import annotations

from typing import Any

import torch

MAX_SEQUENCE_ID = (1 << 63) - 1


def validate_sequence_id(value: Any, what: str = "sequence id") -> int:
    """Check that ``value`` is a valid sequence ID (an int in [0, 2**63)) and return it as int."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                value = int(value)
            else:
                raise TypeError
        except TypeError:
            raise TypeError(f"{what}: sequence IDs are ints in [0, 2**63); got {value!r} of type {type(value).__name__}.") from None
    if not 0 <= value <= MAX_SEQUENCE_ID:
        raise ValueError(f"{what}: sequence IDs are ints in [0, 2**63); got {value}.")
    return value


def normalize_sequence_ids(sequence_ids: Any, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    """Check sequence IDs and return them as int64: (B,) per sequence or (B, T) per token."""
    if not isinstance(sequence_ids, torch.Tensor):
        try:
            sequence_ids = torch.as_tensor(sequence_ids)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"sequence_ids must be a LongTensor of shape (B,) or (B, T); got {type(sequence_ids).__name__}.") from err
    if sequence_ids.dtype in (torch.bool,) or sequence_ids.is_floating_point() or sequence_ids.is_complex():
        raise TypeError(
            f"sequence_ids must hold integers (torch.long), got dtype {sequence_ids.dtype}; IDs are 63-bit ints, "
            "which floats cannot represent exactly. Build them with memsinks.assign_sequence_ids."
        )
    sequence_ids = sequence_ids.to(torch.int64)
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
    if sequence_ids.numel() and bool((sequence_ids < 0).any()):
        raise ValueError("sequence_ids must be non-negative (IDs are ints in [0, 2**63); 0 means 'no sinks').")
    return sequence_ids
