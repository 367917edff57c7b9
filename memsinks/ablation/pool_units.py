"""Per-unit control of the sink pool, by editing the weights that read the pool units.

The core modes switch the whole pool, or the units of whole IDs. Sweeps, per-block
attribution and deletion need finer control: any chosen set of pool units. A pool unit's only
path to the output is its column of the MLP's down projection (split: the column of the
unit in ``base``; append: the column of ``sink_weight``), so scaling that column by ``s``
has exactly the effect of scaling the unit by ``s``. ``scaled_pool_units`` does it for the
length of a ``with`` block and then copies the saved columns back, bit for bit;
``zero_pool_units`` does it for good (targeted deletion).

Units are numbered as the router numbers them: all layers' pools concatenated in block
order, ``router.total_pool`` in all (the same order as ``router.pool_bits``).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from memsinks.layers import SinkDownProjection, linear_weight
from memsinks.model import get_router, unwrap_model


def pool_columns(model: nn.Module) -> list[tuple[int, torch.Tensor]]:
    """For each block with sinks, in router order: (block index, the (out, pool) view of its down weights).

    The views share storage with the parameters, so writing into them edits the model.
    """
    inner = unwrap_model(model)
    router = get_router(inner)
    downs = {m.layer: m for m in inner.modules() if isinstance(m, SinkDownProjection)}
    out = []
    for spec in router.specs:
        down = downs[spec.layer]
        if down.placement == "append":
            out.append((spec.layer, down.sink_weight.data))
        else:
            out.append((spec.layer, linear_weight(down.base).data[:, spec.shared:]))
    return out


def units_of_block(model: nn.Module, layer: int) -> torch.Tensor:
    """Bool (total_pool,): the pool units of block ``layer`` (all False if it has no sinks)."""
    router = get_router(model)
    mask = torch.zeros(router.total_pool, dtype=torch.bool)
    offset = 0
    for spec in router.specs:
        if spec.layer == layer:
            mask[offset:offset + spec.pool] = True
        offset += spec.pool
    return mask


def units_of_ids(model: nn.Module, ids: list[int]) -> torch.Tensor:
    """Bool (total_pool,): the units that any of ``ids`` switches on (what ``exclude`` mode turns off)."""
    router = get_router(model)
    if not ids:
        return torch.zeros(router.total_pool, dtype=torch.bool)
    return router.compute_pool_bits(torch.tensor(list(ids), dtype=torch.int64)).any(dim=0)


def _check_scale(model: nn.Module, scale: torch.Tensor) -> torch.Tensor:
    total = get_router(model).total_pool
    scale = torch.as_tensor(scale, dtype=torch.float32)
    if scale.shape != (total,):
        raise ValueError(f"Expected one scale per pool unit, shape ({total},); got {tuple(scale.shape)}.")
    if not torch.isfinite(scale).all():
        raise ValueError("Pool unit scales must be finite.")
    return scale


@contextlib.contextmanager
def scaled_pool_units(model: nn.Module, scale: torch.Tensor) -> Iterator[nn.Module]:
    """Multiply pool unit ``u``'s output by ``scale[u]`` inside the block; weights restored exactly after.

    Args:
        scale: float (total_pool,), e.g. 0 for the units to drop and 1 elsewhere.
    """
    scale = _check_scale(model, scale)
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    offset = 0
    try:
        with torch.no_grad():
            for _, cols in pool_columns(model):
                s = scale[offset:offset + cols.shape[1]]
                offset += cols.shape[1]
                if bool((s == 1).all()):
                    continue
                saved.append((cols, cols.clone()))
                cols.mul_(s.to(device=cols.device, dtype=cols.dtype))
        yield model
    finally:
        with torch.no_grad():
            for cols, original in saved:
                cols.copy_(original)


def zero_pool_units(model: nn.Module, units: torch.Tensor) -> int:
    """Zero, for good, the down-projection columns of the chosen pool units; returns how many units.

    Args:
        units: bool (total_pool,).
    """
    units = torch.as_tensor(units, dtype=torch.bool)
    _check_scale(model, units.float())
    offset = 0
    with torch.no_grad():
        for _, cols in pool_columns(model):
            chosen = units[offset:offset + cols.shape[1]].to(cols.device)
            offset += cols.shape[1]
            cols[:, chosen] = 0
    return int(units.sum())
