"""The model of a run: built from a config (pretrain) or loaded (finetune), then LoRA, then sinks.

Sinks go on last, after ``get_peft_model`` (see the memsinks README, "With peft"), so the
appended sink units stay trainable next to the adapters. Every rank builds the same model:
pretraining seeds the initialisation with ``training.seed``.
"""

from __future__ import annotations

import contextlib
import os

from memsinks_recipe.common import RecipeError
from memsinks_recipe.config import Recipe


@contextlib.contextmanager
def zero3_lifted(args):
    """Build (and save) models with all their weights on this process, also under ZeRO-3.

    Under ZeRO-3 transformers creates models inside ``deepspeed.zero.Init`` (parameters
    partitioned at creation) whenever a DeepSpeed config is registered, and accelerate
    registers one even with ``zero3_init_flag: false``. ``add_sinks`` needs the MLP weights
    whole, so the registration is lifted while the model is built; DeepSpeed partitions the
    model when the Trainer wraps it.
    """
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    plugin = getattr(args, "deepspeed_plugin", None)
    registered = getattr(plugin, "dschf", None) or getattr(args, "hf_deepspeed_config", None)
    if registered is None:
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(registered)


def build_model(r: Recipe, tokenizer, max_len: int, args=None):
    """The model with LoRA and sinks as configured (sinks after get_peft_model, see the memsinks README)."""
    with zero3_lifted(args):
        return _build_model(r, tokenizer, max_len)


def _build_model(r: Recipe, tokenizer, max_len: int):
    import torch

    import memsinks

    dtype = getattr(torch, r.model.dtype)
    if r.scenario == "pretrain":
        model = _model_from_config(r, tokenizer, max_len, dtype)
    else:
        model = _pretrained_model(r, dtype)
    limit = next((getattr(model.config, n) for n in ("n_positions", "max_position_embeddings")
                  if isinstance(getattr(model.config, n, None), int)), None)
    if limit is not None and max_len > limit:
        fix = "raise the model's position limit" + (" (model.config)" if r.scenario == "pretrain" else "")
        if not (r.scenario == "pretrain" and r.data.source == "embedded" and r.model.tokenizer is None):
            fix = "lower data.window or " + fix  # embedded stories are trained whole
        raise RecipeError(f"The longest training row has {max_len} tokens but the model takes at most {limit} "
                          f"positions; {fix}.")
    if r.lora.enabled:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=r.lora.r, lora_alpha=r.lora.alpha, lora_dropout=r.lora.dropout,
                                                 target_modules=r.lora.target_modules, task_type="CAUSAL_LM"))
    if r.sinks.enabled:
        config = memsinks.SinksConfig(placement=r.sinks.placement, **r.sinks_config)
        try:
            memsinks.add_sinks(model, config)
        except TypeError as err:
            raise RecipeError(f"sinks: {err}") from None
    return model


def _model_from_config(r: Recipe, tokenizer, max_len: int, dtype):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    eos = tokenizer.eos_token_id
    special = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id
               is not None else eos, "eos_token_id": eos, "pad_token_id": tokenizer.pad_token_id}
    try:
        config = AutoConfig.for_model(r.model.architecture, **{**special, **r.model.config})
    except (ValueError, TypeError) as err:
        raise RecipeError(f"model.architecture={r.model.architecture!r} / model.config: {err}") from None
    torch.manual_seed(int(r.training.get("seed", 42)))  # the same initial weights on every rank and every run
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _pretrained_model(r: Recipe, dtype):
    """``memsinks._causal_lm.load_causal_lm`` of model.name_or_path (GGUF weights de-quantized to ``dtype``)."""
    from memsinks._causal_lm import load_causal_lm

    path = r.model.name_or_path  # an existing directory or a hub name (checked with the config)
    try:
        return load_causal_lm(path, gguf_file=r.model.gguf_file, dtype=dtype)
    except Exception as err:
        raise RecipeError(f"Could not load model.name_or_path={path!r} ({type(err).__name__}: {err}).") from None


def _weight_files(directory: str) -> list[str]:
    """The directory's safetensors weight files (one, or the shards of an index); none if it has none."""
    from memsinks.save_and_load import safetensors_files

    try:
        return safetensors_files(directory)
    except FileNotFoundError:
        return []


def restore_stock_layout(directory: str, model):
    """Rewrite ``directory``'s weights in the stock layout if they were saved with the sink wrappers' names.

    ZeRO-3 saves parameters by name (``...c_proj.base.weight``, ``...sink_weight``), bypassing
    the ``state_dict`` hooks that give a model with sinks the stock layout. ``model`` (a model
    with the same sinks, on CPU) takes those tensors through ``load_state_dict``, whose hook
    accepts either layout, and writes them back with ``save_pretrained``, whose hook gives the
    stock one. Returns ``model`` (reusable for the next checkpoint); a directory already in the
    stock layout is left as it is.
    """
    import torch
    from safetensors.torch import load_file

    files = _weight_files(directory)
    state: dict = {}
    for path in files:
        state.update(load_file(path))
    if not any(".base." in k or k.endswith(("sink_weight", "sink_bias")) for k in state):
        return model
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"{directory}: tensors the model does not have: {result.unexpected_keys[:3]}; was it saved "
                           "from a model with the same sinks?")
    tied = set(getattr(model, "_tied_weights_keys", None) or ())  # ZeRO-3 saves a tied weight once
    missing = [k for k in result.missing_keys if k not in tied]
    if missing:
        raise RuntimeError(f"{directory}: tensors missing from the checkpoint: {missing[:3]}.")
    for path in files:
        os.remove(path)
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        os.remove(index)
    with torch.no_grad():
        model.save_pretrained(directory)
    return model
