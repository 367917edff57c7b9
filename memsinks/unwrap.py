"""The transformers model inside the wrappers training puts around it."""

from __future__ import annotations

from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / DeepSpeed / peft / Opacus / torch.compile wrappers.

    Generation, scoring and sink bookkeeping need the plain model (``generate()``, the router,
    no per-sample hooks); wrappers nest in any order, so this peels until nothing changes.
    """
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(getattr(model, "_module", None), nn.Module) and not hasattr(model, "config"):
            model = model._module  # Opacus GradSampleModule
        elif isinstance(getattr(model, "module", None), nn.Module) and not hasattr(model, "config"):
            model = model.module
    return model
