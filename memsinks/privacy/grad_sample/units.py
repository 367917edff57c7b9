"""Which privacy unit each row of a physical batch belongs to, and pooling rows into units.

When every unit has one row, per-row quantities are per-unit ones up to a permutation;
otherwise (user-level DP) a unit's rows are laid out one after the other in a zero-padded
(U, rows_per_unit * T, k) tensor before norms are taken, so that cross terms between the
rows of one unit count.
"""

from __future__ import annotations

import torch

from memsinks.privacy.grad_sample.factors import OneHot


class UnitGrouping:
    """The unit of each row of one physical batch.

    Args:
        index: (B,) long in [0, count): the unit of each row.
        count: U, the number of units in the batch.
    """

    def __init__(self, index: torch.Tensor, count: int):
        self.index = index
        self.count = count
        self.one_row_each = count == index.numel()
        if not self.one_row_each:
            sizes = torch.bincount(index, minlength=count)
            self.width = int(sizes.max())
            order = torch.argsort(index, stable=True)
            starts = torch.cumsum(sizes, 0) - sizes
            slot = torch.empty_like(index)
            slot[order] = torch.arange(index.numel(), device=index.device) - starts[index[order]]
            self.flat_slot = index * self.width + slot  # row -> position in the (U * width) padded layout

    def pool(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (U, width * T, ...), each unit's rows one after the other, zero padded."""
        out = t.new_zeros((self.count * self.width,) + tuple(t.shape[1:]))
        out[self.flat_slot] = t
        return out.reshape(self.count, self.width * t.shape[1], *t.shape[2:])

    def pool_factor(self, left: torch.Tensor | OneHot) -> torch.Tensor | OneHot:
        """``pool`` for a left factor, one-hot included."""
        if isinstance(left, OneHot):
            return OneHot(self.pool(left.index), left.size)
        return self.pool(left)

    def to_units(self, per_row: torch.Tensor) -> torch.Tensor:
        """Sum per-row values (B, ...) into per-unit ones (U, ...)."""
        out = per_row.new_zeros((self.count,) + tuple(per_row.shape[1:]))
        return out.index_add_(0, self.index, per_row)
