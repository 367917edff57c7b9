"""Normalisation layers: per-row gradients of the elementwise scale (and shift).

``nn.LayerNorm`` and ``nn.RMSNorm`` by type; transformers' RMSNorm classes (Llama, Mistral,
Qwen2...: ``weight * x / rms(x)``, computed in float32) are not ``nn.RMSNorm``, so they are
recognised by name and attributes. The per-row gradient of the scale is ``sum_t g_t * xhat_t``,
cheaper than the functorch fallback; the reference check at ``make_private`` confirms the
formula on the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from memsinks.privacy.grad_sample.factors import Dense
from memsinks.privacy.grad_sample.registry import Handler, register_handler, register_handler_if


@register_handler(nn.LayerNorm, nn.RMSNorm)
class NormHandler(Handler):
    def contributions(self, module, saved, g, owned):
        x = saved[0]
        shape = tuple(module.normalized_shape)
        b = g.shape[0]
        g2 = g.reshape(b, -1, *shape)
        if "weight" in owned:
            if isinstance(module, nn.LayerNorm):
                xhat = F.layer_norm(x, shape, eps=module.eps)
            else:
                xhat = F.rms_norm(x, shape, eps=module.eps)
            yield owned["weight"], Dense((g2 * xhat.reshape(b, -1, *shape).to(g2.dtype)).sum(1))
        if "bias" in owned:
            yield owned["bias"], Dense(g2.sum(1))


def is_hf_rms_norm(module: nn.Module) -> bool:
    """A transformers RMSNorm: ``*RMSNorm`` with ``variance_epsilon`` and one 1-D ``weight`` as its only parameter."""
    weight = getattr(module, "weight", None)
    return (type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon")
            and isinstance(weight, nn.Parameter) and weight.dim() == 1
            and [n for n, _ in module.named_parameters(recurse=False)] == ["weight"])


@register_handler_if(is_hf_rms_norm)
class HFRMSNormHandler(Handler):
    def contributions(self, module, saved, g, owned):
        if "weight" not in owned:
            return
        x = saved[0]
        xf = x.float()
        xhat = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)).to(x.dtype)
        b = g.shape[0]
        yield owned["weight"], Dense((g.reshape(b, -1, g.shape[-1]) * xhat.reshape(b, -1, x.shape[-1])).sum(1))
