"""Attach sinks to a transformers causal LM, switch their modes, and remove them: the orchestration.

``add_sinks`` keeps the model's class: it wraps the MLP projections of the selected blocks
(``memsinks.layers``, one wrapper variant per placement), gives the model one ``SinkRouter``,
replaces the instance's ``forward`` with one that accepts ``sequence_ids``
(``memsinks.forward``) and its ``save_pretrained`` with one that also writes the sinks config
(``memsinks.save_and_load``). ``remove_sinks`` asks each wrapper to unload itself.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Sequence

from torch import nn

from memsinks.architectures import find_blocks, get_width, layout_for, mlp_modules, set_width
from memsinks.config import EVAL_MODES, SinksConfig
from memsinks.forward import ForwardWithSequenceIds
from memsinks.ids import validate_sequence_id
from memsinks.layers import DOWN_PROJECTIONS, SinkDownProjection
from memsinks.projection import linear_weight
from memsinks.routing import LayerSpec, SinkRouter
from memsinks.save_and_load import install_save_hooks
from memsinks.unwrap import unwrap_model
from memsinks.warmup import SinkWarmup

_ROUTER_ATTR = "_memsinks_router"


def has_sinks(model: nn.Module) -> bool:
    return _ROUTER_ATTR in unwrap_model(model).__dict__


def sink_warmup(model: nn.Module) -> SinkWarmup | None:
    """The sinks' warm-up of a model with sinks (``SinksConfig.sink_warmup_steps > 0``), else None."""
    inner = unwrap_model(model)
    return getattr(inner.forward, "warmup", None) if has_sinks(inner) else None


def get_router(model: nn.Module) -> SinkRouter:
    inner = unwrap_model(model)
    router = inner.__dict__.get(_ROUTER_ATTR)
    if router is None:
        raise ValueError(f"{type(inner).__name__} has no sinks; attach them with memsinks.add_sinks(model, config).")
    return router


def get_sinks_config(model: nn.Module) -> SinksConfig:
    return get_router(model).config


def _resolve_layers(config: SinksConfig, n_blocks: int) -> list[int]:
    if config.layers is None:
        return list(range(n_blocks))
    out = []
    for i in config.layers:
        j = i + n_blocks if i < 0 else i
        if not 0 <= j < n_blocks:
            raise ValueError(f"SinksConfig.layers has {i}, but the model has {n_blocks} blocks (0..{n_blocks - 1}).")
        out.append(j)
    if len(set(out)) != len(out):
        raise ValueError(f"SinksConfig.layers {config.layers} names the same block twice.")
    return sorted(out)


def add_sinks(model: nn.Module, config: SinksConfig | None = None) -> nn.Module:
    """Attach memorization sinks to a transformers causal LM, in place, and return it.

    The model keeps its class, ``generate()`` and ``save_pretrained()``; its forward accepts
    ``sequence_ids`` (LongTensor (B,) or (B, T)). With ``placement="append"`` the model's
    outputs are unchanged until training moves the new units' (zero) down weights.

    Also accepts a peft model (LoRA on attention): sinks go into the base model's MLPs and
    their new parameters stay trainable (see the README on wrapping order). ``config`` is not
    changed: the model keeps a filled-in copy, which ``get_sinks_config(model)`` returns.
    """
    if config is not None and not isinstance(config, SinksConfig):
        raise TypeError(f"add_sinks expects a memsinks.SinksConfig, got {type(config).__name__}.")
    # the model gets its own copy (filled in below), so one config can serve several models, as in peft
    config = SinksConfig() if config is None else copy.deepcopy(config)
    inner = unwrap_model(model)
    if _ROUTER_ATTR in inner.__dict__:
        raise ValueError(
            "This model already has sinks. To change them, start from the base model, or call "
            "memsinks.remove_sinks(model) first."
        )
    hf_config = getattr(inner, "config", None)
    if hf_config is None or not hasattr(hf_config, "model_type"):
        raise TypeError(f"add_sinks expects a transformers causal LM (PreTrainedModel); got {type(inner).__name__}.")
    layout = layout_for(hf_config.model_type)
    if config.model_type is not None and config.model_type != hf_config.model_type:
        raise ValueError(f"This SinksConfig was made for model_type {config.model_type!r}, not {hf_config.model_type!r}.")
    blocks = find_blocks(inner, layout)
    if config.layers == "auto":
        config.layers = config.auto_layers(len(blocks))
    layers = _resolve_layers(config, len(blocks))
    base_width = get_width(hf_config, layout)
    if config.base_intermediate_size is not None and config.base_intermediate_size != base_width:
        raise ValueError(
            f"The SinksConfig was saved for an MLP of {config.base_intermediate_size} units, but this model's "
            f"config says {base_width}."
        )
    config.base_intermediate_size = base_width
    config.model_type = hf_config.model_type

    down_cls = DOWN_PROJECTIONS[config.placement]
    specs = []
    for layer in layers:
        _, _, down = mlp_modules(blocks[layer], layout, layer)
        width = linear_weight(down).shape[1]
        pool = config.pool_size(width)
        specs.append(LayerSpec(layer=layer, width=down_cls.mask_width(width, pool), pool=pool))
    router = SinkRouter(config, specs)
    wrappers = [
        down_cls.attach(getattr(blocks[spec.layer], layout.mlp), layout.up, layout.down, router, spec.layer, spec.pool)
        for spec in specs
    ]
    if config.placement == "append" and len(layers) == len(blocks):
        set_width(hf_config, layout, base_width + config.n_sink_units)
    inner.__dict__[_ROUTER_ATTR] = router
    warmup = SinkWarmup(inner, wrappers[0], config.sink_warmup_steps) if config.sink_warmup_steps else None
    inner.forward = ForwardWithSequenceIds(inner, router, wrappers[0], warmup)
    install_save_hooks(model, inner, router)
    return model


@contextlib.contextmanager
def sinks_mode(model: nn.Module, mode: str | None, exclude_ids: Sequence[int] | None = None) -> Iterator[nn.Module]:
    """Run the model's forwards (training or eval) in one sinks mode inside the block.

    ``"drop"``: all sinks off (the shipped model). ``"mean"``: sinks scaled by ``p_mem``.
    ``"own"``: each sequence's own sinks (needs ``sequence_ids``). ``"exclude"``: the sinks of
    ``exclude_ids`` off, the rest as in ``"own"`` when IDs are given, else as in ``"mean"``.
    ``None``: leave the mode as it is (the model need not have sinks), for callers whose mode is optional.
    """
    if mode is None:
        if exclude_ids:
            raise ValueError("exclude_ids only applies to mode 'exclude', not None.")
        yield model
        return
    if mode not in EVAL_MODES:
        raise ValueError(f"Unknown sinks mode {mode!r}; use one of {EVAL_MODES}.")
    ids = tuple(validate_sequence_id(i, "exclude_ids") for i in (exclude_ids or ()))
    if mode == "exclude" and not ids:
        raise ValueError("sinks_mode(model, 'exclude') needs exclude_ids=[...]: the IDs whose sinks to switch off.")
    if mode != "exclude" and ids:
        raise ValueError(f"exclude_ids only applies to mode 'exclude', not {mode!r}.")
    router = get_router(model)
    router.mode_stack.append((mode, ids))
    try:
        yield model
    finally:
        router.mode_stack.pop()


def remove_sinks(
    model: nn.Module,
    mode: str = "drop",
    exclude_ids: Sequence[int] | None = None,
    prune: bool = True,
) -> nn.Module:
    """Remove the sinks in place and return the plain transformers model.

    The result computes what ``mode`` computed with sinks: ``"drop"`` (default) gives the
    deliverable model; ``"mean"`` and ``"exclude"`` bake their constant scaling into the down
    projections. Under ``append`` + ``"drop"`` the original architecture comes back; under
    ``split`` + ``"drop"`` the sink units are pruned (``prune=True``, a smaller MLP) or their
    down-projection weights zeroed (``prune=False``). The model's config is updated so that
    ``save_pretrained`` writes a checkpoint stock ``AutoModelForCausalLM.from_pretrained``
    loads without memsinks.
    """
    inner = unwrap_model(model)
    router = get_router(inner)
    cfg = router.config
    if mode == "exclude":
        chosen = list(exclude_ids) if exclude_ids is not None else list(cfg.exclude_ids)
        if not chosen:
            raise ValueError("remove_sinks(model, 'exclude') needs exclude_ids=[...]: the IDs whose sinks to remove.")
    else:
        chosen = []
    ids = [validate_sequence_id(i, "exclude_ids") for i in chosen]
    if mode not in ("drop", "mean", "exclude"):
        raise ValueError(f"remove_sinks bakes a constant mode ('drop', 'mean' or 'exclude'), not {mode!r}: "
                         "'own' depends on each sequence's ID, which a plain model does not receive.")
    factors = router.constant_pool(mode, ids)
    layout = layout_for(inner.config.model_type)
    blocks = find_blocks(inner, layout)
    prune_units = prune and mode == "drop"
    mlps = {spec.layer: getattr(blocks[spec.layer], layout.mlp) for spec in router.specs}
    downs: dict[int, SinkDownProjection] = {layer: getattr(mlp, layout.down) for layer, mlp in mlps.items()}
    widths = {layer: down.unloaded_width(prune_units) for layer, down in downs.items()}
    all_widths = {widths.get(i, cfg.base_intermediate_size) for i in range(len(blocks))}
    if len(all_widths) != 1:
        if prune_units:
            raise ValueError(
                f"Pruning {cfg.placement}-placement sinks on only some blocks would give MLPs of different widths, "
                "which a transformers config cannot describe. Use remove_sinks(model, prune=False) to zero them instead."
            )
        raise ValueError(
            f"After removing sinks in mode {mode!r} the blocks' MLP widths differ ({sorted(all_widths)}), which a "
            "transformers config cannot describe. Use mode 'drop' (which restores the original widths)."
        )
    offset = 0
    for spec in router.specs:
        mlp, down = mlps[spec.layer], downs[spec.layer]
        for name in layout.up:
            setattr(mlp, name, down.unload_up(getattr(mlp, name), prune_units))
        setattr(mlp, layout.down, down.unload(factors[offset:offset + spec.pool], prune_units))
        offset += spec.pool
    set_width(inner.config, layout, all_widths.pop())
    forward = inner.__dict__.get("forward")
    if isinstance(forward, ForwardWithSequenceIds) and forward.warmup is not None:
        forward.warmup.close()
    for attr in ("forward", "save_pretrained"):
        inner.__dict__.pop(attr, None)
    del inner.__dict__[_ROUTER_ATTR]
    return model
