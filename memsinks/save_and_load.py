"""Saving and loading models with sinks: the save hooks ``add_sinks`` installs, and ``from_pretrained``.

A model with sinks saves through its stock ``save_pretrained`` (the sink wrappers present the
stock state-dict layout, ``memsinks.layers``) plus ``sinks_config.json`` beside it; a peft
model saves its adapter plus the trainable sink tensors (``sinks.safetensors``). Loading
rebuilds the architecture from ``config.json``, attaches the same sinks and reads the widened
MLP tensors, strictly: every tensor must have the shape the config files describe, the files
must be intact, and the sinks config must be the one the weights were saved with
(``memsinks.routing_record``). ``checkpoint_weight_files`` is the one place that says which
files hold a checkpoint's weights.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any

import torch
from torch import nn

from memsinks._saved_config import read_json_object
from memsinks.architectures import MLPLayout, layout_for, set_width
from memsinks.atomic import write_atomically
from memsinks.config import SINKS_CONFIG_NAME, SinksConfig
from memsinks.errors import DamagedCheckpointError, WeightsMismatchError
from memsinks.layers import sink_buffers, sink_parameters
from memsinks.safetensors_io import check_safetensors, load_safetensors
from memsinks.routing import SinkRouter
from memsinks.routing_record import RECORD_KEY, check_fields, check_pool_sizes, make_record, parse_record
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
            paths = [os.path.join(directory, name) for name in _shard_names(index_path)]
            missing = [p for p in paths if not os.path.isfile(p)]
            if missing:
                raise FileNotFoundError(f"{index_path} names {len(paths)} weight files, but {missing[:3]} do not exist; "
                                        "the checkpoint was not copied completely.")
            return fmt, paths
        if os.path.isfile(os.path.join(directory, single)):
            return fmt, [os.path.join(directory, single)]
    raise FileNotFoundError(
        f"{directory} has no model weights: expected model.safetensors (or a sharded model.safetensors.index.json), "
        "as written by model.save_pretrained."
    )


def _shard_names(index_path: str) -> list[str]:
    """The weight files a sharded checkpoint's index names; DamagedCheckpointError naming the index if unreadable."""
    try:
        with open(index_path, "rb") as f:
            index = json.loads(f.read().decode("utf-8"))
        names = sorted(set(index["weight_map"].values()))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise DamagedCheckpointError(
            f"{index_path} is damaged: it is not a JSON object with a 'weight_map' of tensor names to files "
            f"({type(err).__name__}: {err}). Re-copy or re-save the checkpoint.") from None
    if not names or not all(isinstance(n, str) and n and os.path.basename(n) == n for n in names):
        raise DamagedCheckpointError(f"{index_path} is damaged: its weight_map names no weight files, or names "
                                     "that are not plain file names in the checkpoint folder.")
    return names


def safetensors_files(directory: str | os.PathLike) -> list[str]:
    """The safetensors weight files of ``directory``; FileNotFoundError if it has none (saying so for pickle)."""
    directory = os.fspath(directory)
    if not any(os.path.isfile(os.path.join(directory, name)) for name in SAFETENSORS_WEIGHTS):
        hint = " It has only pickle (.bin) weights, which memsinks does not load; re-save with safetensors." if glob.glob(
            os.path.join(directory, "*.bin")) else ""
        raise FileNotFoundError(f"No safetensors weights (model.safetensors) in {directory}.{hint}")
    return checkpoint_weight_files(directory)[1]


_ABSENT = object()


class SavePretrainedWithSinks:
    """The instance ``save_pretrained`` of a model with sinks: the stock save, then ``sinks_config.json`` beside it."""

    def __init__(self, model: nn.Module, router: SinkRouter):
        self.model = model
        self.router = router
        self.warned = False

    def __call__(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any):
        model = self.model
        config = model.config
        previous = config.__dict__.get(RECORD_KEY, _ABSENT)
        setattr(config, RECORD_KEY, make_record(self.router))  # written into config.json, beside the weights
        try:
            result = type(model).save_pretrained(model, save_directory, *args, **kwargs)
        finally:
            if previous is _ABSENT:
                delattr(config, RECORD_KEY)
            else:
                setattr(config, RECORD_KEY, previous)
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
        from safetensors.torch import save

        result = type(self.peft_model).save_pretrained(self.peft_model, save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            inner = unwrap_model(self.peft_model)
            tensors = {k: p.detach().cpu().contiguous() for k, p in sink_parameters(inner).items() if p.requires_grad}
            tensors.update({k: b.detach().cpu().contiguous() for k, b in sink_buffers(inner).items()})
            data = save(tensors, metadata={RECORD_KEY: json.dumps(make_record(self.router), sort_keys=True)})
            write_atomically(os.path.join(save_directory, SINK_WEIGHTS_NAME), data)
            self.router.config.save_pretrained(save_directory)
        return result


class PeftLoadAdapterWithSinks:
    """A peft model's ``load_adapter``: the adapter, plus the sink tensors saved beside it (Trainer resume)."""

    def __init__(self, peft_model: nn.Module, router: SinkRouter):
        self.peft_model = peft_model
        self.router = router

    def __call__(self, model_id: str | os.PathLike, *args: Any, **kwargs: Any):
        path = os.path.join(os.fspath(model_id), SINK_WEIGHTS_NAME)
        sinks = read_sink_weights(self.peft_model, path, self.router) if os.path.isfile(path) else {}
        result = type(self.peft_model).load_adapter(self.peft_model, model_id, *args, **kwargs)
        with torch.no_grad():
            for param, tensor in sinks.values():
                param.copy_(tensor)
        return result


def install_save_hooks(model: nn.Module, inner: nn.Module, router: SinkRouter) -> None:
    """Give ``inner`` (and ``model``, when it is the peft model around it) the save and load methods above."""
    inner.save_pretrained = SavePretrainedWithSinks(inner, router)
    if model is not inner and hasattr(model, "peft_config"):
        model.save_pretrained = PeftSaveWithSinks(model, router)
        model.load_adapter = PeftLoadAdapterWithSinks(model, router)


def read_sink_weights(model: nn.Module, path: str | os.PathLike,
                      router: SinkRouter) -> dict[str, tuple[nn.Parameter, torch.Tensor]]:
    """The sink tensors of a peft model's ``sinks.safetensors``, each with the parameter of ``model`` it loads into.

    Everything is checked before anything is loaded: the file is intact, its routing record
    matches ``router``'s config (a resume with another SinksConfig would train other units),
    and every tensor exists in the model with the same shape.
    """
    path = os.fspath(path)
    record = parse_record(check_safetensors(path).get(RECORD_KEY), path)
    check_fields(record, router.config, path, "This model's SinksConfig (the one given to add_sinks)")
    check_pool_sizes(record, router, path)
    inner = unwrap_model(model)
    params = {**sink_parameters(inner), **sink_buffers(inner)}
    state = load_safetensors(path)
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise WeightsMismatchError(f"{path} has sink tensors this model does not: {unknown[:3]}; was it saved with the "
                                   "same SinksConfig?")
    missing = sorted(name for name, p in params.items() if p.requires_grad and name not in state)
    if missing:
        raise WeightsMismatchError(f"{path} lacks trainable sink tensors of this model, such as {missing[:3]}; they "
                                   "would keep their current values. Was it saved from a model with the same sinks?")
    for name, tensor in state.items():
        if params[name].shape != tensor.shape:
            raise WeightsMismatchError(f"{path}: {name} has shape {tuple(tensor.shape)}, the model "
                                       f"{tuple(params[name].shape)}.")
    return {name: (params[name], tensor) for name, tensor in state.items()}


def _read_tensors(directory: str, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors whose names start with one of ``prefixes``."""
    out = {}
    for path in safetensors_files(directory):
        out.update(load_safetensors(path, prefixes))
    return out


def _check_shapes(directory: str, info: dict, model: nn.Module, layout: MLPLayout, router: SinkRouter) -> None:
    """Refuse every tensor transformers could not load as it is, except the widened MLPs memsinks loads itself.

    transformers builds the MLPs at their width before sinks, so an appended pool makes the
    checkpoint's MLP tensors wider than the model's: those (and only those, with exactly the
    width the sinks add) are left to ``_read_tensors``. Any other shape difference, an unexpected
    tensor or a missing one means the config files do not describe these weights.
    """
    widened = {}
    for spec in router.specs:
        prefix = f"{layout.blocks}.{spec.layer}.{layout.mlp}"
        widened.update({f"{prefix}.{k}": tuple(v.shape) for k, v in model.get_submodule(prefix).state_dict().items()})
    problems = [
        f"{key} is {tuple(saved)} in the checkpoint but {widened.get(key, tuple(built))} in the model the config files "
        "describe"
        for key, saved, built in sorted(info.get("mismatched_keys", ()), key=lambda m: m[0])
        if widened.get(key) != tuple(saved)
    ]
    sink_mlps = tuple(f"{layout.blocks}.{spec.layer}.{layout.mlp}." for spec in router.specs)
    # the MLPs with sinks are loaded (strictly) by from_pretrained itself, in either layout
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not k.startswith(sink_mlps))
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) the model does not have, such as {unexpected[:3]}")
    missing = sorted(k for k in info.get("missing_keys", ()) if k not in widened)
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing from the checkpoint, such as {missing[:3]}")
    if problems:
        raise WeightsMismatchError(
            f"{directory}: the weights do not match config.json and {SINKS_CONFIG_NAME}: {'; '.join(problems[:5])}"
            f"{f' (and {len(problems) - 5} more)' if len(problems) > 5 else ''}. Stock transformers refuses this folder "
            "too. Use the config files saved with these weights.")


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
    Loading is strict: a damaged file is a DamagedCheckpointError, a tensor whose shape the
    config files do not describe or a sinks config that is not the one saved with the weights
    a WeightsMismatchError, each naming the file, tensor or field. Returns the model, moved to
    ``device`` if given, in eval mode.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from memsinks.model import add_sinks, get_router  # model.py installs this module's hooks: imported here

    directory = os.fspath(directory)
    sinks_config = SinksConfig.from_pretrained(directory)
    for path in safetensors_files(directory):
        check_safetensors(path)
    where = os.path.join(directory, "config.json")
    if not os.path.isfile(where):
        raise FileNotFoundError(f"{directory} has no config.json: it is not a transformers checkpoint.")
    read_json_object(where, "transformers config")  # a damaged file is named here, not deep in transformers
    hf_config = AutoConfig.from_pretrained(directory)
    record = parse_record(hf_config.__dict__.pop(RECORD_KEY, None), where)  # popped: the model's config stays plain
    check_fields(record, sinks_config, where, os.path.join(directory, SINKS_CONFIG_NAME))
    if sinks_config.base_intermediate_size is None:
        raise ValueError(f"{directory}/sinks_config.json has no base_intermediate_size; it was not written by add_sinks.")
    layout = layout_for(hf_config.model_type)
    set_width(hf_config, layout, sinks_config.base_intermediate_size)
    if dtype is not None:
        kwargs["dtype"] = dtype
    # appended MLPs are wider than the base config says: transformers leaves them to us, and
    # _check_shapes refuses every other mismatch it reports
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            directory, config=hf_config, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    add_sinks(model, sinks_config)
    router = get_router(model)
    check_pool_sizes(record, router, where)
    _check_shapes(directory, info, model, layout, router)
    prefixes = tuple(f"{layout.blocks}.{spec.layer}.{layout.mlp}." for spec in router.specs)
    result = model.load_state_dict(_read_tensors(directory, prefixes), strict=False)
    missing = [k for k in result.missing_keys if k.startswith(prefixes)]
    if missing or result.unexpected_keys:
        raise WeightsMismatchError(
            f"{directory}: the MLP weights do not match sinks_config.json (missing {missing[:3]}, unexpected "
            f"{result.unexpected_keys[:3]}); was the checkpoint saved from a model with these sinks?")
    if device is not None:
        model.to(device)
    return model.eval()
