"""The errors memsinks raises about a checkpoint's files, so callers can tell a damaged file from a mismatch."""

from __future__ import annotations


class DamagedCheckpointError(ValueError):
    """A checkpoint file is truncated, empty or not in its format (the message names the file)."""


class WeightsMismatchError(RuntimeError):
    """A checkpoint's config files do not describe the weights saved beside them (the message names the tensor or field)."""
