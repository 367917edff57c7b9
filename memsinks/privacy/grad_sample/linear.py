"""``nn.Linear`` (LoRA adapters included) and GPT-2's ``Conv1D``: ``y = x W^T + b`` / ``y = x W + b``."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from memsinks.privacy.grad_sample.factors import Dense, Outer, as_rows
from memsinks.privacy.grad_sample.registry import Handler, register_handler


def linear_contributions(weight: nn.Parameter | None, bias: nn.Parameter | None, x: torch.Tensor, g: torch.Tensor,
                         conv1d: bool):
    """Contributions of ``y = x W^T + b`` (Linear, weight (out, in)) or ``x W + b`` (Conv1D, weight (in, out)).

    ``x``: (B, ..., in) inputs; ``g``: (B, ..., out) output gradients; ``weight`` / ``bias``:
    the parameters to account for, or None when frozen.
    """
    b = g.shape[0]
    g2 = as_rows(g, b)
    x2 = as_rows(x, b)
    if weight is not None:
        yield weight, (Outer(x2, g2) if conv1d else Outer(g2, x2))
    if bias is not None:
        yield bias, Dense(g2.sum(1))


@register_handler(nn.Linear, Conv1D)
class LinearHandler(Handler):
    outer_params = ("weight",)

    def contributions(self, module, saved, g, owned):
        yield from linear_contributions(owned.get("weight"), owned.get("bias"), saved[0], g,
                                        conv1d=isinstance(module, Conv1D))
