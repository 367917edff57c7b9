"""The sink wrappers of ``memsinks.layers``, registered from the privacy side.

Both project with ``F.linear`` / ``addmm`` on their base projection's weights instead of
calling the base module, so the base module's own hooks never fire: the wrapper's handler
accounts for the base's parameters as well as the pool's (``covers``).

- ``SinkUpProjection``: output = [base units | pool units], the pool's rows in ``sink_weight``;
  the base units alone in drop mode, where the pool is not computed.
- ``SinkDownProjection`` with ``placement == "append"``: the base units go through the base
  weight, the pool's units, masked by the batch's routing, through ``sink_weight``. Under
  ``"split"`` the wrapper calls its base module (an ordinary handled layer) on the masked
  input and needs no handler.

The pool is stored divided by the wrapper's ``scale`` (``SinksConfig.sink_lr_scale``), so its
per-example gradients are the effective weights' times ``scale``. Only the attributes ``base``,
``sink_weight``, ``sink_bias``, ``pool``, ``scale``, ``layer`` and ``placement`` (and the router's ``mask_for(layer)``) are relied on, and the lookup walks the
MRO, so subclasses of the two wrappers are served too.
"""

from __future__ import annotations

from transformers.pytorch_utils import Conv1D

from memsinks.layers import SinkDownProjection, SinkUpProjection, linear_weight
from memsinks.projection import in_out
from memsinks.privacy.grad_sample.linear import linear_contributions
from memsinks.privacy.grad_sample.registry import Handler, register_handler


class _CoversBase(Handler):
    outer_params = ("base.weight", "sink_weight")

    def owned(self, module):
        own = {n: p for n, p in module.named_parameters(recurse=False) if p.requires_grad}
        own.update({"base." + n: p for n, p in module.base.named_parameters(recurse=False) if p.requires_grad})
        return own

    def covers(self, module):
        return (module.base,)


@register_handler(SinkUpProjection)
class SinkUpHandler(_CoversBase):
    def contributions(self, module, saved, g, owned):
        x = saved[0]
        out = linear_weight(module.base).shape[0]
        conv1d = isinstance(module.base, Conv1D)
        yield from linear_contributions(owned.get("base.weight"), owned.get("base.bias"), x, g[..., :out], conv1d)
        if g.shape[-1] == out:  # the pools were off (drop mode): the wrapper computed the base units alone
            return
        # the pool is stored divided by its scale: its gradient is the effective weights' times the scale
        yield from linear_contributions(owned.get("sink_weight"), owned.get("sink_bias"), x,
                                        g[..., out:] * getattr(module, "scale", 1.0), conv1d=False)


@register_handler(SinkDownProjection)
class SinkDownAppendHandler(_CoversBase):
    @classmethod
    def accepts(cls, module):
        return module.placement == "append"

    def capture(self, module, args):
        return (args[0], module.router.mask_for(module.layer))

    def contributions(self, module, saved, g, owned):
        h, mask = saved
        n_base = in_out(module.base)[0]  # h may lack the pool's units, which the up projections skip in drop mode
        conv1d = isinstance(module.base, Conv1D)
        yield from linear_contributions(owned.get("base.weight"), owned.get("base.bias"), h[..., :n_base], g, conv1d)
        if mask is not None and "sink_weight" in owned:
            pool = h[..., n_base:] * (mask.to(h.dtype) * getattr(module, "scale", 1.0))
            yield from linear_contributions(owned["sink_weight"], None, pool, g, conv1d=False)
