"""``nn.Embedding``: the per-row gradient is the output gradient scattered into the looked-up rows."""

from __future__ import annotations

from torch import nn

from memsinks.privacy.grad_sample.factors import OneHot, Outer, as_index_rows, as_rows
from memsinks.privacy.grad_sample.registry import Handler, register_handler


@register_handler(nn.Embedding)
class EmbeddingHandler(Handler):
    outer_params = ("weight",)

    def validate(self, module):
        if module.max_norm is not None or module.scale_grad_by_freq or module.sparse:
            raise ValueError(
                f"{type(module).__name__} with max_norm, scale_grad_by_freq or sparse gradients cannot get "
                "per-example gradients; use a plain embedding or freeze it."
            )

    def contributions(self, module, saved, g, owned):
        if "weight" not in owned:
            return
        b = g.shape[0]
        index = as_index_rows(saved[0], b)
        g2 = as_rows(g, b)
        if module.padding_idx is not None:  # autograd gives the padding row no gradient
            g2 = g2 * (index != module.padding_idx).unsqueeze(-1).to(g2.dtype)
        yield owned["weight"], Outer(OneHot(index, module.num_embeddings), g2)
