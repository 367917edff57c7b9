"""The fallback: per-row vector-Jacobian products of a module's forward with ``torch.func``.

What Opacus's functorch mode does, for any module with parameters of its own and no
registered handler, called on one tensor. Exact for any module whose output rows depend
only on the same input rows (no batch statistics); the reference check run by
``make_private`` verifies it on the model. The clipper stops recording while a handler
computes, so the module's forward run here leaves no record of its own.
"""

from __future__ import annotations

import torch

from memsinks.privacy.grad_sample.factors import Dense
from memsinks.privacy.grad_sample.registry import Handler, register_fallback


@register_fallback
class FunctorchHandler(Handler):
    def capture(self, module, args):
        if len(args) != 1 or not isinstance(args[0], torch.Tensor):
            raise RuntimeError(
                f"{type(module).__name__} has trainable parameters and is called with {len(args)} positional "
                "arguments; memsinks computes per-example gradients of such modules only when they take one tensor. "
                "Freeze its parameters (param.requires_grad_(False))."
            )
        return (args[0],)

    def contributions(self, module, saved, g, owned):
        from torch.func import functional_call, grad, vmap

        b = g.shape[0]
        x = saved[0]
        if x.shape[0] != b:
            x = x.expand(b, *x.shape[1:])

        def one_row(params, xb, gb):
            out = functional_call(module, params, (xb.unsqueeze(0),))
            return (out * gb.unsqueeze(0)).sum()

        detached = {n: p.detach() for n, p in owned.items()}
        grads = vmap(grad(one_row), in_dims=(None, 0, 0))(detached, x, g)
        for name, p in owned.items():
            yield p, Dense(grads[name])
