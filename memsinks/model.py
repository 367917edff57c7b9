"""Attach sinks to a transformers causal LM, switch their modes, save, load and remove them.

``add_sinks`` keeps the model's class: it wraps the MLP projections of the selected blocks
(``memsinks.layers``), gives the model one ``SinkRouter`` and replaces the instance's
``forward`` with a callable that accepts ``sequence_ids`` and advertises it in its signature,
so the stock ``Trainer`` keeps the ``sequence_ids`` column and ``generate()`` passes it on.
"""

from __future__ import annotations

import contextlib
import glob
import inspect
import json
import logging
import os
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from memsinks.architectures import MLPLayout, find_blocks, get_width, layout_for, set_width
from memsinks.config import EVAL_MODES, SinksConfig, validate_sequence_id
from memsinks.layers import SinkDownProjection, SinkUpProjection, linear_weight
from memsinks.routing import LayerSpec, SinkRouter

logger = logging.getLogger("memsinks")

_ROUTER_ATTR = "_memsinks_router"
SINK_WEIGHTS_NAME = "sinks.safetensors"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / DeepSpeed / peft / Opacus / torch.compile wrappers."""
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


def has_sinks(model: nn.Module) -> bool:
    return _ROUTER_ATTR in unwrap_model(model).__dict__


def get_router(model: nn.Module) -> SinkRouter:
    inner = unwrap_model(model)
    router = inner.__dict__.get(_ROUTER_ATTR)
    if router is None:
        raise ValueError(f"{type(inner).__name__} has no sinks; attach them with memsinks.add_sinks(model, config).")
    return router


def get_sinks_config(model: nn.Module) -> SinksConfig:
    return get_router(model).config


class _ForwardWithSequenceIds:
    """The instance ``forward`` of a model with sinks: routes by ``sequence_ids``, then runs the stock forward.

    Its ``__signature__`` is the class forward's plus ``sequence_ids``, which is what the
    Trainer's ``remove_unused_columns`` and ``generate()``'s kwargs check inspect.
    """

    def __init__(self, model: nn.Module, reference: nn.Module):
        self.model = model
        self.reference = reference  # a sink layer whose weight gives the masks' dtype and device
        self.checked_trainable = False
        self.class_forward = type(model).forward
        sig = inspect.signature(self.class_forward)
        params = [p for name, p in sig.parameters.items() if name != "self"]
        extra = inspect.Parameter("sequence_ids", inspect.Parameter.KEYWORD_ONLY, default=None)
        at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
        params.insert(at, extra)
        self.__signature__ = sig.replace(parameters=params)

    def __call__(self, *args: Any, sequence_ids: Any = None, **kwargs: Any):
        model = self.model
        router: SinkRouter = model.__dict__[_ROUTER_ATTR]
        mode, exclude = router.resolve_mode(model.training)
        ids = None
        if sequence_ids is not None:
            ids = normalize_sequence_ids(sequence_ids, _input_shape(args, kwargs))
        if mode == "own" and ids is None:
            if model.training:
                raise ValueError(
                    "This model has memorization sinks and is training, but the batch has no `sequence_ids`: "
                    "training without routing would silently train every sink on every sequence. Give each "
                    "example an ID (memsinks.assign_sequence_ids) and batch with memsinks.SinksDataCollator, or "
                    "pass model(..., sequence_ids=ids). To train with sinks off on purpose, use "
                    "`with memsinks.sinks_mode(model, 'drop'):`."
                )
            raise ValueError(
                "Sinks mode 'own' needs `sequence_ids` (LongTensor of shape (B,) or (B, T)); pass them to the "
                "forward or to generate(), or use mode 'drop' / 'mean'."
            )
        # a forward in which no parameter requires grad is not training the model through autograd (DP-SGD's
        # clipper switches requires_grad off while it records): the check waits for one that is
        if model.training and not self.checked_trainable and any(p.requires_grad for p in model.parameters()):
            self.checked_trainable = True
            _warn_if_sinks_frozen(model)
        weight = linear_weight(self.reference.base)
        router.begin(ids, mode, exclude, weight.dtype, weight.device)
        return self.class_forward(model, *args, **kwargs)


class _SavePretrainedWithSinks:
    """The instance ``save_pretrained``: the stock save, then ``sinks_config.json`` beside it."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.warned = False

    def __call__(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any):
        model = self.model
        result = type(model).save_pretrained(model, save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            get_router(model).config.save_pretrained(save_directory)
            if not self.warned:
                logger.warning(
                    "Saved a checkpoint WITH memorization sinks to %s. It is for resuming, probing and ablation, "
                    "not for shipping: stock transformers would load it with every sink unit on. Ship "
                    "memsinks.remove_sinks(model) (or `memsinks ablate`), which removes the memorization the "
                    "sinks hold.",
                    save_directory,
                )
                self.warned = True
        return result


def _sink_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that make up the sinks: appended pools, or the MLPs that hold split pools."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (SinkUpProjection, SinkDownProjection)):
            for pname, p in module.named_parameters():
                out[f"{name}.{pname}"] = p
    return out


def _warn_if_sinks_frozen(model: nn.Module) -> None:
    params = _sink_parameters(model)
    if params and not any(p.requires_grad for p in params.values()):
        logger.warning(
            "Training a model whose sink units are all frozen: the sinks cannot absorb memorization. With peft, "
            "call memsinks.add_sinks on the peft model (after get_peft_model), so the appended sink units stay "
            "trainable next to the LoRA adapters."
        )


class _PeftSaveWithSinks:
    """A peft model's ``save_pretrained``: the adapter, plus the trainable sink tensors and sinks config."""

    def __init__(self, peft_model: nn.Module):
        self.peft_model = peft_model

    def __call__(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any):
        from safetensors.torch import save_file

        result = type(self.peft_model).save_pretrained(self.peft_model, save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            inner = unwrap_model(self.peft_model)
            tensors = {k: p.detach().cpu().contiguous() for k, p in _sink_parameters(inner).items() if p.requires_grad}
            save_file(tensors, os.path.join(save_directory, SINK_WEIGHTS_NAME))
            get_router(inner).config.save_pretrained(save_directory)
        return result


class _PeftLoadAdapterWithSinks:
    """A peft model's ``load_adapter``: the adapter, plus the sink tensors saved beside it (Trainer resume)."""

    def __init__(self, peft_model: nn.Module):
        self.peft_model = peft_model

    def __call__(self, model_id: str | os.PathLike, *args: Any, **kwargs: Any):
        result = type(self.peft_model).load_adapter(self.peft_model, model_id, *args, **kwargs)
        path = os.path.join(os.fspath(model_id), SINK_WEIGHTS_NAME)
        if os.path.isfile(path):
            load_sink_weights(self.peft_model, path)
        return result


def load_sink_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load sink tensors saved with a peft model (``sinks.safetensors``) into ``model``'s sinks."""
    from safetensors.torch import load_file

    params = _sink_parameters(unwrap_model(model))
    state = load_file(os.fspath(path))
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise RuntimeError(f"{path} has sink tensors this model does not: {unknown[:3]}; was it saved with the same SinksConfig?")
    with torch.no_grad():
        for name, tensor in state.items():
            if params[name].shape != tensor.shape:
                raise RuntimeError(f"{path}: {name} has shape {tuple(tensor.shape)}, the model {tuple(params[name].shape)}.")
            params[name].copy_(tensor)


def _input_shape(args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    x = kwargs.get("input_ids", args[0] if args else None)
    if x is None:
        x = kwargs.get("inputs_embeds")
        return tuple(x.shape[:2]) if x is not None else None
    return tuple(x.shape)


def normalize_sequence_ids(sequence_ids: Any, input_shape: tuple[int, ...] | None) -> torch.Tensor:
    """Check sequence IDs and return them as int64: (B,) per sequence or (B, T) per token."""
    if not isinstance(sequence_ids, torch.Tensor):
        try:
            sequence_ids = torch.as_tensor(sequence_ids)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"sequence_ids must be a LongTensor of shape (B,) or (B, T); got {type(sequence_ids).__name__}.") from err
    if sequence_ids.dtype in (torch.bool,) or sequence_ids.is_floating_point() or sequence_ids.is_complex():
        raise TypeError(
            f"sequence_ids must hold integers (torch.long), got dtype {sequence_ids.dtype}; IDs are 63-bit ints, "
            "which floats cannot represent exactly. Build them with memsinks.assign_sequence_ids."
        )
    sequence_ids = sequence_ids.to(torch.int64)
    if input_shape is not None:
        batch = input_shape[0]
        if sequence_ids.dim() == 1:
            ok = sequence_ids.shape[0] == batch
        elif sequence_ids.dim() == 2:
            ok = tuple(sequence_ids.shape) == tuple(input_shape[:2])
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"sequence_ids has shape {tuple(sequence_ids.shape)} but the input batch is {tuple(input_shape)}: "
                "give one ID per sequence (B,) or one per token (B, T). In generate(), use (B,)."
            )
    elif sequence_ids.dim() not in (1, 2):
        raise ValueError(f"sequence_ids must have shape (B,) or (B, T); got {tuple(sequence_ids.shape)}.")
    if sequence_ids.numel() and bool((sequence_ids < 0).any()):
        raise ValueError("sequence_ids must be non-negative (IDs are ints in [0, 2**63); 0 means 'no sinks').")
    return sequence_ids


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


def _mlp_modules(block: nn.Module, layout: MLPLayout) -> tuple[nn.Module, list[nn.Module], nn.Module]:
    mlp = getattr(block, layout.mlp)
    ups = [getattr(mlp, name) for name in layout.up]
    down = getattr(mlp, layout.down)
    for name, module in zip(layout.up + (layout.down,), ups + [down]):
        if not isinstance(module, (nn.Linear, Conv1D)):
            raise TypeError(
                f"{layout.mlp}.{name} is a {type(module).__name__}; memsinks wraps nn.Linear and Conv1D projections. "
                "Attach sinks before quantizing the model or wrapping its MLP with peft (LoRA on attention is fine)."
            )
    return mlp, ups, down


def add_sinks(model: nn.Module, config: SinksConfig | None = None) -> nn.Module:
    """Attach memorization sinks to a transformers causal LM, in place, and return it.

    The model keeps its class, ``generate()`` and ``save_pretrained()``; its forward accepts
    ``sequence_ids`` (LongTensor (B,) or (B, T)). With ``placement="append"`` the model's
    outputs are unchanged until training moves the new units' (zero) down weights.

    Also accepts a peft model (LoRA on attention): sinks go into the base model's MLPs and
    their new parameters stay trainable (see the README on wrapping order).
    """
    config = SinksConfig() if config is None else config
    if not isinstance(config, SinksConfig):
        raise TypeError(f"add_sinks expects a memsinks.SinksConfig, got {type(config).__name__}.")
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
    layers = _resolve_layers(config, len(blocks))
    base_width = get_width(hf_config, layout)
    if config.base_intermediate_size is not None and config.base_intermediate_size != base_width:
        raise ValueError(
            f"The SinksConfig was saved for an MLP of {config.base_intermediate_size} units, but this model's "
            f"config says {base_width}."
        )
    config.base_intermediate_size = base_width
    config.model_type = hf_config.model_type

    specs = []
    for layer in layers:
        _, _, down = _mlp_modules(blocks[layer], layout)
        width = linear_weight(down).shape[1]
        pool = config.pool_size(width)
        specs.append(LayerSpec(layer=layer, width=width if config.placement == "split" else pool, pool=pool))
    router = SinkRouter(config, specs)

    for spec in specs:
        mlp, ups, down = _mlp_modules(blocks[spec.layer], layout)
        if config.placement == "append":
            generator = torch.Generator().manual_seed((config.routing_seed * 1000003 + spec.layer) % (1 << 63))
            for name, up in zip(layout.up, ups):
                setattr(mlp, name, SinkUpProjection(up, spec.pool, generator))
        wrapper = SinkDownProjection(down, router, spec.layer, spec.pool, config.placement)
        setattr(mlp, layout.down, wrapper)

    if config.placement == "append" and len(layers) == len(blocks):
        set_width(hf_config, layout, base_width + config.n_sink_units)
    inner.__dict__[_ROUTER_ATTR] = router
    inner.forward = _ForwardWithSequenceIds(inner, getattr(getattr(blocks[layers[0]], layout.mlp), layout.down))
    inner.save_pretrained = _SavePretrainedWithSinks(inner)
    if model is not inner and hasattr(model, "peft_config"):
        model.save_pretrained = _PeftSaveWithSinks(model)
        model.load_adapter = _PeftLoadAdapterWithSinks(model)
    return model


@contextlib.contextmanager
def sinks_mode(model: nn.Module, mode: str, exclude_ids: Sequence[int] | None = None) -> Iterator[nn.Module]:
    """Run the model's forwards (training or eval) in one sinks mode inside the block.

    ``"drop"``: all sinks off (the shipped model). ``"mean"``: sinks scaled by ``p_mem``.
    ``"own"``: each sequence's own sinks (needs ``sequence_ids``). ``"exclude"``: the sinks of
    ``exclude_ids`` off, the rest as in ``"own"`` when IDs are given, else as in ``"mean"``.
    """
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


def _new_projection(like: nn.Module, weight_linear: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A plain module of ``like``'s type with the given (out, in) weight and bias."""
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


def _pool_values(router: SinkRouter, mode: str, exclude_ids: Sequence[int]) -> torch.Tensor:
    """Per pool unit (all layers concatenated), the constant factor a non-ID mode gives it."""
    if mode == "drop":
        return torch.zeros(router.total_pool)
    if mode == "mean":
        return torch.full((router.total_pool,), router.config.p_mem)
    if mode == "exclude":
        excluded = router.pool_bits(exclude_ids, torch.device("cpu")).any(dim=0)
        return (~excluded).float() * router.config.p_mem
    raise ValueError(f"remove_sinks bakes a constant mode ('drop', 'mean' or 'exclude'), not {mode!r}: "
                     "'own' depends on each sequence's ID, which a plain model does not receive.")


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
    values = _pool_values(router, mode, ids)
    layout = layout_for(inner.config.model_type)
    blocks = find_blocks(inner, layout)
    prune_units = prune and mode == "drop"
    if prune_units and cfg.placement == "split" and len(router.specs) != len(blocks):
        raise ValueError(
            "Pruning split-placement sinks on only some blocks would give MLPs of different widths, which a "
            "transformers config cannot describe. Use remove_sinks(model, prune=False) to zero them instead."
        )
    widths = {}
    offset = 0
    for spec in router.specs:
        mlp = getattr(blocks[spec.layer], layout.mlp)
        down: SinkDownProjection = getattr(mlp, layout.down)
        v = values[offset:offset + spec.pool]
        offset += spec.pool
        base_down = down.base
        w_down = linear_weight(base_down).detach()
        bias = base_down.bias.detach() if getattr(base_down, "bias", None) is not None else None
        if cfg.placement == "append":
            for name in layout.up:
                up: SinkUpProjection = getattr(mlp, name)
                if prune_units:
                    setattr(mlp, name, up.base)
                else:
                    w = torch.cat([linear_weight(up.base).detach(), up.sink_weight.detach()])
                    b = None if up.sink_bias is None else torch.cat([up.base.bias.detach(), up.sink_bias.detach()])
                    setattr(mlp, name, _new_projection(up.base, w, b))
            if prune_units:
                setattr(mlp, layout.down, base_down)
                widths[spec.layer] = w_down.shape[1]
            else:
                sink = down.sink_weight.detach() * v.to(w_down)
                setattr(mlp, layout.down, _new_projection(base_down, torch.cat([w_down, sink], dim=1), bias))
                widths[spec.layer] = w_down.shape[1] + spec.pool
            continue
        shared = spec.shared
        if prune_units:
            for name in layout.up:
                up = getattr(mlp, name)
                w = linear_weight(up).detach()[:shared]
                b = up.bias.detach()[:shared] if getattr(up, "bias", None) is not None else None
                setattr(mlp, name, _new_projection(up, w, b))
            setattr(mlp, layout.down, _new_projection(base_down, w_down[:, :shared], bias))
            widths[spec.layer] = shared
        else:
            scale = torch.cat([torch.ones(shared), v]).to(w_down)
            setattr(mlp, layout.down, _new_projection(base_down, w_down * scale, bias))
            widths[spec.layer] = spec.width
    all_widths = {widths.get(i, cfg.base_intermediate_size) for i in range(len(blocks))}
    if len(all_widths) != 1:
        raise ValueError(
            f"After removing sinks in mode {mode!r} the blocks' MLP widths differ ({sorted(all_widths)}), which a "
            "transformers config cannot describe. Use mode 'drop' (which restores the original widths)."
        )
    set_width(inner.config, layout, all_widths.pop())
    for attr in ("forward", "save_pretrained"):
        inner.__dict__.pop(attr, None)
    del inner.__dict__[_ROUTER_ATTR]
    return model


def _checkpoint_files(directory: str) -> list[str]:
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            return [os.path.join(directory, name) for name in sorted(set(json.load(f)["weight_map"].values()))]
    single = os.path.join(directory, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    hint = " It has only pickle (.bin) weights, which memsinks does not load; re-save with safetensors." if glob.glob(
        os.path.join(directory, "*.bin")) else ""
    raise FileNotFoundError(f"No safetensors weights (model.safetensors) in {directory}.{hint}")


def _read_tensors(directory: str, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors whose names start with one of ``prefixes``."""
    from safetensors import safe_open

    out = {}
    for path in _checkpoint_files(directory):
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefixes):
                    out[key] = f.get_tensor(key)
    return out


def from_pretrained(
    directory: str | os.PathLike,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Load a model saved with sinks (``save_pretrained`` of a model from ``add_sinks``).

    transformers loads the base architecture (its own key conversions, dtype and device
    options apply; ``kwargs`` go to ``AutoModelForCausalLM.from_pretrained``), sinks are
    attached from ``sinks_config.json`` (same routing seed and hash, hence the same masks for
    every ID), and the MLPs that carry sinks are loaded from the checkpoint's widened tensors.
    Returns the model, moved to ``device`` if given, in eval mode.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    directory = os.fspath(directory)
    sinks_config = SinksConfig.from_pretrained(directory)
    _checkpoint_files(directory)
    hf_config = AutoConfig.from_pretrained(directory)
    if sinks_config.base_intermediate_size is None:
        raise ValueError(f"{directory}/sinks_config.json has no base_intermediate_size; it was not written by add_sinks.")
    layout = layout_for(hf_config.model_type)
    set_width(hf_config, layout, sinks_config.base_intermediate_size)
    if dtype is not None:
        kwargs["dtype"] = dtype
    # appended MLPs are wider than the base config says: transformers leaves them to us
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            directory, config=hf_config, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    add_sinks(model, sinks_config)
    prefixes = tuple(f"{layout.blocks}.{spec.layer}.{layout.mlp}." for spec in get_router(model).specs)
    missing_elsewhere = [k for k in info.get("missing_keys", []) if not k.startswith(prefixes)]
    if missing_elsewhere:
        raise RuntimeError(f"{directory}: weights missing from the checkpoint: {sorted(missing_elsewhere)[:5]}.")
    state = _read_tensors(directory, prefixes)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k.startswith(prefixes)]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"{directory}: the MLP weights do not match sinks_config.json (missing {missing[:3]}, unexpected "
            f"{result.unexpected_keys[:3]}); was the checkpoint saved from a model with these sinks?")
    if device is not None:
        model.to(device)
    return model.eval()
