"""Splitting a probe set across ranks and gathering per-example results back, in order.

Every rank probes a contiguous slice of the set (``np.array_split`` order), then all ranks
exchange their per-example arrays with ``torch.distributed.all_gather_object`` and
concatenate them by rank, which restores the original order. Without an initialised process
group there is one rank and nothing to exchange.
"""

from __future__ import annotations

import numpy as np
import torch


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_and_world() -> tuple[int, int]:
    if is_distributed():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard_indices(n: int) -> np.ndarray:
    """This rank's slice of ``range(n)``: contiguous, sizes differing by at most one (possibly empty)."""
    rank, world = rank_and_world()
    return np.array_split(np.arange(n), world)[rank]


_FAILED = "__failed__"


def gather_arrays(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate each array of ``local`` across ranks in rank order (identity with one rank).

    A rank with nothing to probe (an empty slice) sends an empty dict; keys are the union over ranks.
    """
    if not is_distributed():
        return local
    gathered: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, local)
    keys = list(dict.fromkeys(k for part in gathered for k in part))
    return {k: np.concatenate([np.asarray(part[k]) for part in gathered if k in part]) for k in keys}


def gather_probe_results(compute_local) -> dict[str, np.ndarray]:
    """Run ``compute_local()`` on this rank's slice and gather the results from all ranks.

    A probe that finds non-finite numbers on one rank (``FloatingPointError``) must not leave the
    other ranks waiting in the gather: the failure is gathered like a result and raised on every
    rank alike.
    """
    try:
        local = compute_local()
    except FloatingPointError as err:
        local = {_FAILED: np.array([str(err)])}
    gathered = gather_arrays(local)
    if _FAILED in gathered:
        raise FloatingPointError(str(gathered[_FAILED][0]))
    return gathered
