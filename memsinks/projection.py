"""The two projection types an MLP is made of, nn.Linear and transformers' Conv1D, handled alike.

Conv1D (GPT-2) stores its weight as (in, out), nn.Linear as (out, in); the sink layers read,
apply and rebuild both through these helpers so that the (out, in) convention holds everywhere else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The module's weight as (out_features, in_features), a view (Conv1D stores (in, out))."""
    if isinstance(module, Conv1D):
        return module.weight.t()
    return module.weight


def in_out(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear or Conv1D."""
    w = linear_weight(module)
    return w.shape[1], w.shape[0]


def has_bias(module: nn.Module) -> bool:
    return getattr(module, "bias", None) is not None


def project(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply ``module`` to ``x`` without requiring ``x`` to be contiguous.

    Gives bit-identical results to ``module(x)`` for ``nn.Linear`` and ``Conv1D``.
    """
    if isinstance(module, Conv1D):
        out = torch.addmm(module.bias, x.reshape(-1, x.shape[-1]), module.weight)
        return out.view(x.shape[:-1] + (module.nf,))
    if type(module) is nn.Linear:
        return F.linear(x, module.weight, module.bias)
    return module(x.contiguous())


def new_projection(like: nn.Module, weight_linear: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A plain module of ``like``'s type with the given (out, in) weight and (out,) bias, copied."""
    out_features, in_features = weight_linear.shape
    if isinstance(like, Conv1D):
        module = Conv1D(out_features, in_features)
        module.weight = nn.Parameter(weight_linear.t().contiguous().detach().clone())
        module.bias = nn.Parameter(bias.detach().clone())
        return module
    module = nn.Linear(in_features, out_features, bias=bias is not None, device=weight_linear.device, dtype=weight_linear.dtype)
    with torch.no_grad():
        module.weight.copy_(weight_linear)
        if bias is not None:
            module.bias.copy_(bias)
    return module
