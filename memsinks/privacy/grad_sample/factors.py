"""The two shapes a per-row gradient takes before it is reduced: outer-product factors, or a dense tensor.

Every gradient that reaches a parameter is written as a sum over tokens of outer products
``left_t (P) x right_t (Q)`` in the parameter's own (P, Q) layout (``Outer``), or as a
per-row gradient tensor (``Dense``: biases, norm scales, anything through the functorch
fallback). An embedding's left factor is one-hot, kept as its indices (``OneHot``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class OneHot:
    """A one-hot left factor given by its indices: (B, T) ints into ``size`` rows (embeddings)."""

    index: torch.Tensor
    size: int


@dataclass
class Outer:
    """Per-row gradient ``sum_t left[b, t] (x) right[b, t]`` in the parameter's (P, Q) layout.

    ``left``: (B, T, P) tensor or ``OneHot``; ``right``: (B, T, Q).
    """

    left: torch.Tensor | OneHot
    right: torch.Tensor

    def memory(self) -> int:
        """Elements held to compute this contribution's norm and clipped sum later (ghost)."""
        b, t, q = self.right.shape
        p = 1 if isinstance(self.left, OneHot) else self.left.shape[-1]
        return b * t * (p + q)

    def shape(self) -> tuple[int, int, int]:
        """(B, P, Q): rows, and the parameter's two dimensions."""
        b, _, q = self.right.shape
        return b, (self.left.size if isinstance(self.left, OneHot) else self.left.shape[-1]), q

    def to(self, dtype: torch.dtype) -> "Outer":
        """The same factors in ``dtype`` (a one-hot factor has none)."""
        left = self.left if isinstance(self.left, OneHot) else self.left.to(dtype)
        return Outer(left, self.right.to(dtype))

    def write_per_row(self, out: torch.Tensor, accumulate: bool) -> None:
        """Write (or add) the (B, P, Q) per-row gradients into ``out``."""
        right = self.right
        if isinstance(self.left, OneHot):
            b, p, q = self.shape()
            if not accumulate:
                out.zero_()
            rows = (torch.arange(b, device=right.device)[:, None] * p + self.left.index).reshape(-1)
            out.view(b * p, q).index_add_(0, rows, right.reshape(-1, q))
        elif accumulate:
            out.baddbmm_(self.left.transpose(1, 2), right)
        else:
            torch.bmm(self.left.transpose(1, 2), right, out=out)


@dataclass
class Dense:
    """Per-row gradients already materialised: (B, *param.shape)."""

    per_row: torch.Tensor


Contribution = Outer | Dense


def as_rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(b, ..., k) -> (B, N, k), expanding a broadcast batch of 1 (HF's (1, T) position ids)."""
    if x.shape[0] != batch:
        if x.shape[0] != 1:
            raise RuntimeError(f"A layer input has batch {x.shape[0]} where its output gradient has {batch}.")
        x = x.expand(batch, *x.shape[1:])
    if x.dim() == 1:
        return x.reshape(batch, 1, 1)
    if x.dim() == 2:
        return x.reshape(batch, 1, x.shape[-1])
    return x.reshape(batch, -1, x.shape[-1])


def as_index_rows(index: torch.Tensor, batch: int) -> torch.Tensor:
    """(b, ...) ints -> (B, N), expanding a broadcast batch of 1."""
    if index.shape[0] != batch:
        index = index.expand(batch, *index.shape[1:])
    return index.reshape(batch, -1)
