"""Saving and loading models with sinks: the save hooks ``add_sinks`` installs, and ``from_pretrained``.

A model with sinks saves through its stock ``save_pretrained`` (the sink wrappers present the
stock state-dict layout, ``memsinks.layers``) plus ``sinks_config.json`` beside it; a peft
model saves its adapter plus the trainable sink tensors (``sinks.safetensors``). Loading
rebuilds the architecture from ``config.json``, attaches the same sinks and reads the widened
MLP tensors. ``checkpoint_weight_files`` is the one place that says which files hold a
checkpoint's weights.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any

import torch
from torch import nn

from memsinks.architectures import layout_for, set_width
from memsinks.config import SinksConfig
from memsinks.layers import sink_buffers, sink_parameters
from memsinks.routing import SinkRouter
from memsinks.unwrap import unwrap_model

logger = logging.getLogger("memsinks")

SINK_WEIGHTS_NAME = "sinks.safetensors"
SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def checkpoint_weight_files(directory: str | os.PathLike) -> tuple[str, list[str]]:
    """The format (``"safetensors"`` or ``"pickle"``) and paths of the model weights in ``directory``.

    One file, or the shards its index names; safetensors wins when both formats are there.
    FileNotFoundError when there are none.
    """
    directory = os.fspath(directory)
    for fmt, (single, index) in (("safetensors", SAFETENSORS_WEIGHTS), ("pickle", PICKLE_WEIGHTS)):
        index_path = os.path.join(directory, index)
        if os.path.isfile(index_path):
            with open(index_path, encoding="utf-8") as f:
                names = sorted(set(json.load(f)["weight_map"].values()))
            return fmt, [os.path.join(directory, name) for name in names]
        if os.path.isfile(os.path.join(directory, single)):
            return fmt, [os.path.join(directory, single)]
    raise FileNotFoundError(
        f"{directory} has no model weights: expected model.safetensors (or a sharded model.safetensors.index.json), "
        "as written by model.save_pretrained."
    )


def safetensors_files(directory: str | os.PathLike) -> list[str]:
    """The safetensors weight files of ``directory``; FileNotFoundError if it has none (saying so for pickle)."""
    directory = os.fspath(directory)
    try:
        fmt, paths = checkpoint_weight_files(directory)
    except FileNotFoundError:
        fmt, paths = None, []
    if fmt == "safetensors":
        return paths
    hint = " It has only pickle (.bin) weights, which memsinks does not load; re-save with safetensors." if glob.glob(
        os.path.join(directory, "*.bin")) else ""
    raise FileNotFoundError(f"No safetensors weights (model.safetensors) in {directory}.{hint}")


class SavePretrainedWithSinks:
    """The instance ``save_pretrained`` of a model with sinks: the stock save, then ``sinks_config.json`` beside it."""

    def __init__(self, model: nn.Module, router: SinkRouter):
        self.model = model
        self.router = router
        self.warned = False

    def __call__(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any):
        model = self.model
        result = type(model).save_pretrained(model, save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            self.router.config.save_pretrained(save_directory)
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


class PeftSaveWithSinks:
    """A peft model's ``save_pretrained``: the adapter, plus the trainable sink tensors and sinks config."""

    def __init__(self, peft_model: nn.Module, router: SinkRouter):
        self.peft_model = peft_model
        self.router = router

    def __call__(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any):
        from safetensors.torch import save_file

        result = type(self.peft_model).save_pretrained(self.peft_model, save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            inner = unwrap_model(self.peft_model)
            tensors = {k: p.detach().cpu().contiguous() for k, p in sink_parameters(inner).items() if p.requires_grad}
            tensors.update({k: b.detach().cpu().contiguous() for k, b in sink_buffers(inner).items()})
            save_file(tensors, os.path.join(save_directory, SINK_WEIGHTS_NAME))
            self.router.config.save_pretrained(save_directory)
        return result


class PeftLoadAdapterWithSinks:
    """A peft model's ``load_adapter``: the adapter, plus the sink tensors saved beside it (Trainer resume)."""

    def __init__(self, peft_model: nn.Module):
        self.peft_model = peft_model

    def __call__(self, model_id: str | os.PathLike, *args: Any, **kwargs: Any):
        result = type(self.peft_model).load_adapter(self.peft_model, model_id, *args, **kwargs)
        path = os.path.join(os.fspath(model_id), SINK_WEIGHTS_NAME)
        if os.path.isfile(path):
            load_sink_weights(self.peft_model, path)
        return result


def install_save_hooks(model: nn.Module, inner: nn.Module, router: SinkRouter) -> None:
    """Give ``inner`` (and ``model``, when it is the peft model around it) the save and load methods above."""
    inner.save_pretrained = SavePretrainedWithSinks(inner, router)
    if model is not inner and hasattr(model, "peft_config"):
        model.save_pretrained = PeftSaveWithSinks(model, router)
        model.load_adapter = PeftLoadAdapterWithSinks(model)


def load_sink_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load sink tensors saved with a peft model (``sinks.safetensors``, with the warm-up's progress) into ``model``'s sinks."""
    from safetensors.torch import load_file

    inner = unwrap_model(model)
    params = {**sink_parameters(inner), **sink_buffers(inner)}
    state = load_file(os.fspath(path))
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise RuntimeError(f"{path} has sink tensors this model does not: {unknown[:3]}; was it saved with the same SinksConfig?")
    with torch.no_grad():
        for name, tensor in state.items():
            if params[name].shape != tensor.shape:
                raise RuntimeError(f"{path}: {name} has shape {tuple(tensor.shape)}, the model {tuple(params[name].shape)}.")
            params[name].copy_(tensor)


def _read_tensors(directory: str, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors whose names start with one of ``prefixes``."""
    from safetensors import safe_open

    out = {}
    for path in safetensors_files(directory):
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

    from memsinks.model import add_sinks, get_router  # model.py installs this module's hooks: imported here

    directory = os.fspath(directory)
    sinks_config = SinksConfig.from_pretrained(directory)
    safetensors_files(directory)
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
