"""Which parts of a model's parameters are the sinks: whole tensors (appended pools) or slices (split pools).

Two mechanisms train the sinks apart from the rest of the model: the warm-up, in which only
the sinks learn (``memsinks.warmup``), and marked private tokens, whose loss trains only the
sinks (``memsinks.private_tokens``). Both need to know, for every trainable parameter, which
of its entries belong to the sinks:

- ``append``: the appended units are parameters of their own (the up rows of each
  ``SinkUpProjection``, the down columns of the ``AppendSinkDownProjection``), whole;
- ``split``: the pool is the last ``pool`` units of the MLP's own projections, so it is a
  slice of each up projection's weight rows (and bias) and of the down projection's columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from memsinks.architectures import find_blocks, layout_for
from memsinks.layers import AppendSinkDownProjection, SinkUpProjection, SplitSinkDownProjection, SplitSinkUpProjection


@dataclass(frozen=True)
class SinkSlice:
    """The sinks' part of ``param``: entries ``start:`` along ``dim`` (``dim`` None: the whole tensor)."""

    param: nn.Parameter
    dim: int | None = None
    start: int = 0

    def keep(self, grad: torch.Tensor) -> torch.Tensor:
        """``grad`` with every entry outside the sinks' part set to zero."""
        if self.dim is None:
            return grad
        out = torch.zeros_like(grad)
        n = grad.shape[self.dim] - self.start
        out.narrow(self.dim, self.start, n).copy_(grad.narrow(self.dim, self.start, n))
        return out


def _output_slices(module: nn.Module, start: int) -> list[SinkSlice]:
    """A projection's output units ``start:`` (Linear weight rows / Conv1D columns, and the bias)."""
    out = [SinkSlice(module.weight, 1 if isinstance(module, Conv1D) else 0, start)]
    if getattr(module, "bias", None) is not None:
        out.append(SinkSlice(module.bias, 0, start))
    return out


def sink_slices(model: nn.Module) -> list[SinkSlice]:
    """Every sink tensor or slice of ``model`` (the transformers model that ``add_sinks`` changed)."""
    layout = layout_for(model.config.model_type)
    out: list[SinkSlice] = []
    for block in find_blocks(model, layout):
        mlp = getattr(block, layout.mlp)
        down = getattr(mlp, layout.down)
        if isinstance(down, AppendSinkDownProjection):
            for name in layout.up:
                up: SinkUpProjection = getattr(mlp, name)
                out += [SinkSlice(p) for p in (up.sink_weight, up.sink_bias) if p is not None]
            out.append(SinkSlice(down.sink_weight))
        elif isinstance(down, SplitSinkDownProjection):
            shared = down.shared
            for name in layout.up:
                up = getattr(mlp, name)
                out += _output_slices(up.base if isinstance(up, SplitSinkUpProjection) else up, shared)
            out.append(SinkSlice(down.base.weight, 0 if isinstance(down.base, Conv1D) else 1, shared))
    return out
