"""Several linear maps of one input, written side by side into one output without a concatenation.

An appended pool widens an up projection: its output is [base units | pool units]. Computing
the parts apart and concatenating them copies the whole (B, T, out + pool) output once more
in the forward, and slicing it apart again in the backward; on a small MLP that copy is a
visible share of the step. ``joint_linear`` instead lets each part's matmul write straight
into its columns of one preallocated output (BLAS takes the output's row stride). Its backward
takes the weights' gradients of all parts in one matmul, and the input's in two: the first
part's (the base), then the other parts' rows stacked, so the base weight is never copied.

Each part is computed by its own matmul, exactly as ``F.linear(x, w, b)`` computes it, so the
base units' values are bit-identical to the unwrapped projection's and two parts with equal
weights give bit-identical columns (what mirrored sink pairs rely on).
"""

from __future__ import annotations

from typing import Sequence

import torch

Part = tuple[torch.Tensor, "torch.Tensor | None"]


class _JointLinear(torch.autograd.Function):
    """x2d (N, in), then per part a weight (out_i, in) and a bias (out_i,) or None -> (N, sum out_i)."""

    @staticmethod
    def forward(x2d: torch.Tensor, *flat: torch.Tensor | None) -> torch.Tensor:
        weights, biases = flat[0::2], flat[1::2]
        out = torch.empty(x2d.shape[0], sum(w.shape[0] for w in weights), dtype=x2d.dtype, device=x2d.device)
        start = 0
        for w, b in zip(weights, biases):
            cols = out[:, start:start + w.shape[0]]
            if b is None:
                torch.mm(x2d, w.t(), out=cols)
            else:
                torch.addmm(b, x2d, w.t(), out=cols)
            start += w.shape[0]
        return out

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x2d, *flat = inputs
        weights = flat[0::2]
        ctx.widths = [w.shape[0] for w in weights]
        ctx.has_bias = [b is not None for b in flat[1::2]]
        ctx.save_for_backward(x2d, *weights)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x2d, *weights = ctx.saved_tensors
        grad = grad.contiguous()
        # the first part (the base) alone, the rest (thin sink parts, far below a wide matmul's speed
        # apart) in one matmul over their stacked rows; the weights' gradients in one matmul
        grad_x = None
        if ctx.needs_input_grad[0]:
            first = ctx.widths[0]
            grad_x = torch.mm(grad[:, :first], weights[0])
            if len(weights) > 1:
                grad_x.addmm_(grad[:, first:], torch.cat(weights[1:]))
        wanted = [ctx.needs_input_grad[1 + 2 * i] for i in range(len(weights))]
        if all(wanted):
            grad_w = torch.mm(grad.t(), x2d).split(ctx.widths)
        else:  # a frozen part (a frozen base under trainable sinks): only the trainable parts' matmuls
            starts = [sum(ctx.widths[:i]) for i in range(len(weights))]
            grad_w = [torch.mm(grad[:, a:a + n].t(), x2d) if want else None
                      for a, n, want in zip(starts, ctx.widths, wanted)]
        grad_b = grad.sum(0).split(ctx.widths) if any(ctx.has_bias) else [None] * len(weights)
        grads: list[torch.Tensor | None] = []
        for i, bias in enumerate(ctx.has_bias):
            grads.append(grad_w[i] if wanted[i] else None)
            grads.append(grad_b[i] if bias and ctx.needs_input_grad[2 + 2 * i] else None)
        return (grad_x, *grads)


def joint_linear(x: torch.Tensor, parts: Sequence[Part]) -> torch.Tensor:
    """x: (..., in); parts: (weight (out_i, in), bias (out_i,) or None) -> (..., sum out_i).

    Equal, value for value, to ``torch.cat([F.linear(x, w, b) for w, b in parts], -1)``.
    Under autocast the input and weights are cast to the autocast dtype first, as ``F.linear``
    would cast them.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x = x.to(dtype)
        parts = [(w.to(dtype), None if b is None else b.to(dtype)) for w, b in parts]
    flat: list[torch.Tensor | None] = []
    for w, b in parts:
        flat += [w, b]
    with torch.autocast(device_type, enabled=False):
        out = _JointLinear.apply(x.reshape(-1, x.shape[-1]), *flat)
    return out.view(*x.shape[:-1], out.shape[-1])
