"""Per-unit gradient norms and clipped sums in one backward pass (the shape of ``opacus.grad_sample``).

- ``factors``: the two shapes a per-row gradient takes (outer-product factors, dense);
- ``registry``: ``Handler``, ``register_handler`` (by module type, looked up along the MRO);
- ``linear``, ``embedding``, ``norm``, ``lora``, ``functorch``, ``sinks``: one handler per layer type
  (``functorch`` is the fallback for any other module with parameters of its own);
- ``units``: which privacy unit each row belongs to;
- ``gram``: ghost norms and clipped sums from factors;
- ``clipper``: ``PerUnitClipper``, which hooks the model and does the clipping.

To support a new layer type, write a ``Handler`` subclass in a module of its own, decorate it
with ``@register_handler(MyLayer)`` and import that module here.
"""

from memsinks.privacy.grad_sample import embedding, functorch, linear, lora, norm, sinks  # noqa: F401 (registration)
from memsinks.privacy.grad_sample.clipper import AUTO_MEMORY_RATIO, CLIP_EPS, CLIPPING_MODES, PerUnitClipper
from memsinks.privacy.grad_sample.registry import Handler, handler_for, register_handler, register_handler_if

__all__ = ["AUTO_MEMORY_RATIO", "CLIP_EPS", "CLIPPING_MODES", "Handler", "PerUnitClipper", "handler_for",
           "register_handler", "register_handler_if"]
