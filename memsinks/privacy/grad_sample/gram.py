"""Ghost norms and clipped sums from outer-product factors, without materialising per-unit gradients.

For ``G_u = sum_t left_t (x) right_t`` (and a sum of several such contributions to one
parameter), ``||G_u||^2 = sum_{s,t} (left_s . left_t)(right_s . right_t)`` over all pairs of
contributions, cross terms included (Li et al. 2022, "Large language models can be strong
differentially private learners"): Gram matrices of the token factors, (U, S, T) per pair.
The clipped sum ``sum_u c_u G_u`` is one matmul with one factor scaled by each row's clip
factor.
"""

from __future__ import annotations

import torch

from memsinks.privacy.grad_sample.factors import OneHot, Outer
from memsinks.privacy.grad_sample.units import UnitGrouping


def gram(a: torch.Tensor | OneHot, b: torch.Tensor | OneHot) -> torch.Tensor:
    """(U, S, .) x (U, T, .) -> (U, S, T) inner products of the token factors."""
    if isinstance(a, OneHot) and isinstance(b, OneHot):
        return (a.index[:, :, None] == b.index[:, None, :]).float()
    if isinstance(a, OneHot):
        return torch.gather(b, 2, a.index[:, None, :].expand(-1, b.shape[1], -1)).transpose(1, 2)
    if isinstance(b, OneHot):
        return torch.gather(a, 2, b.index[:, None, :].expand(-1, a.shape[1], -1))
    return torch.bmm(a, b.transpose(1, 2))


def ghost_squared_norms(outers: list[Outer], units: UnitGrouping) -> torch.Tensor:
    """(U,) float32: squared norms of each unit's gradient summed over ``outers`` (all of one parameter)."""
    lefts = [o.left if units.one_row_each else units.pool_factor(o.left) for o in outers]
    rights = [o.right if units.one_row_each else units.pool(o.right) for o in outers]
    first = lefts[0]
    sq = torch.zeros(first.index.shape[0] if isinstance(first, OneHot) else first.shape[0],
                     device=units.index.device, dtype=torch.float32)
    for i in range(len(outers)):
        for j in range(i, len(outers)):
            term = (gram(lefts[i], lefts[j]) * gram(rights[i], rights[j])).sum((1, 2)).float()
            sq = sq + (term if i == j else 2 * term)
    return units.to_units(sq) if units.one_row_each else sq


def clipped_outer_sum(outer: Outer, row_factors: torch.Tensor) -> torch.Tensor:
    """``sum_b c_b sum_t left[b, t] (x) right[b, t]``: (P, Q), the rows' clip factors ``row_factors`` (B,) applied."""
    scale = row_factors.to(outer.right.dtype)[:, None, None]
    q = outer.right.shape[-1]
    if isinstance(outer.left, OneHot):
        g = outer.right.new_zeros(outer.left.size, q)
        return g.index_add_(0, outer.left.index.reshape(-1), (outer.right * scale).reshape(-1, q))
    p = outer.left.shape[-1]
    if p <= q:
        return (outer.left * scale).reshape(-1, p).t() @ outer.right.reshape(-1, q)
    return outer.left.reshape(-1, p).t() @ (outer.right * scale).reshape(-1, q)
