"""Opening a checkpoint with sinks safely: which weight files are accepted, and clear errors for the rest.

Weights are read only from safetensors, or, for a pickle checkpoint the user has explicitly
trusted, with ``torch.load(weights_only=True)`` (the restricted unpickler that builds tensors
and nothing else). A trusted pickle checkpoint is converted to safetensors in a temporary
directory and goes through the same loader as every other checkpoint, ``memsinks.from_pretrained``,
so the check that the sinks config matches the weights is made in one place.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

import torch
from torch import nn

from memsinks.ablation.output_dir import clean_stale, make_owned_dir
from memsinks.config import SINKS_CONFIG_NAME
from memsinks.save_and_load import checkpoint_weight_files

PICKLE_PREFIX = "memsinks-pickle-"  # temporary folders holding a trusted pickle checkpoint converted to safetensors
# Files a tokenizer may be saved as (save_pretrained of slow and fast tokenizers, chat templates).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "chat_template.jinja", "chat_template.json",
)


class UnsafeCheckpointError(ValueError):
    """The checkpoint's weights are pickle files and the user did not say they trust them."""


class CheckpointMismatchError(ValueError):
    """The checkpoint's ``sinks_config.json`` does not describe the weights saved beside it."""


def weight_format(directory: str) -> str:
    """``"safetensors"`` or ``"pickle"``: the format of the model weights in ``directory``."""
    return checkpoint_weight_files(directory)[0]


def check_checkpoint(directory: str | os.PathLike, trust_pickle: bool = False) -> str:
    """Check that ``directory`` is a memsinks checkpoint memsinks may open; returns its weight format.

    Raises FileNotFoundError (not a directory, no config, no sinks config, no weights) or
    UnsafeCheckpointError (pickle weights without ``trust_pickle``), each saying what to do.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Checkpoint {directory} is not a directory; give the folder written by save_pretrained.")
    if not os.path.isfile(os.path.join(directory, "config.json")):
        raise FileNotFoundError(f"{directory} has no config.json: it is not a transformers checkpoint.")
    if not os.path.isfile(os.path.join(directory, SINKS_CONFIG_NAME)):
        raise FileNotFoundError(
            f"{directory} has no {SINKS_CONFIG_NAME}, so it is not a checkpoint with memorization sinks (or the file "
            "was lost). Save the model with sinks attached (model.save_pretrained after memsinks.add_sinks) so the "
            "routing can be rebuilt; without it the sink units cannot be told apart from the shared ones."
        )
    fmt = weight_format(directory)
    if fmt == "pickle" and not trust_pickle:
        raise UnsafeCheckpointError(
            f"{directory} stores its weights as pickle (pytorch_model.bin). Unpickling a file can run arbitrary code, "
            "so memsinks does not open it by default. If you trust where it came from, pass --trust-pickle "
            "(trust_pickle=True): the tensors are then read with torch.load(weights_only=True). Better, re-save the "
            "model with safetensors (save_pretrained does so by default)."
        )
    return fmt


def load_sinks_checkpoint(directory: str | os.PathLike, trust_pickle: bool = False,
                          device: str | torch.device | None = None) -> nn.Module:
    """Load a checkpoint with sinks (in eval mode) after ``check_checkpoint``.

    Raises CheckpointMismatchError when the sinks config and the weights disagree (an MLP
    width, a missing or an extra tensor).
    """
    import memsinks

    directory = os.fspath(directory)
    fmt = check_checkpoint(directory, trust_pickle)
    try:
        if fmt == "safetensors":
            return memsinks.from_pretrained(directory, device=device)
        root = tempfile.gettempdir()
        clean_stale(root, PICKLE_PREFIX, "converted pickle checkpoint(s)")
        tmp = make_owned_dir(root, PICKLE_PREFIX)  # tagged, so a later run removes it if this one is killed
        try:
            _pickle_to_safetensors(directory, tmp)
            return memsinks.from_pretrained(tmp, device=device)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except RuntimeError as err:
        raise CheckpointMismatchError(
            f"{directory}: its {SINKS_CONFIG_NAME} does not match its weights ({err}). Was the sinks config copied "
            "from another run, or edited? Use the sinks_config.json written together with these weights."
        ) from err


def _pickle_to_safetensors(directory: str, out: str) -> None:
    """Read trusted pickle weights with ``weights_only=True`` and write them to ``out`` as safetensors."""
    from safetensors.torch import save_file

    _, paths = checkpoint_weight_files(directory)
    state: dict[str, torch.Tensor] = {}
    for path in paths:
        part = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
            raise ValueError(f"{path} is not a state dict of tensors.")
        state.update(part)
    # safetensors refuses tensors that share memory (tied embeddings): store each on its own
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, os.path.join(out, "model.safetensors"))
    for name in ("config.json", SINKS_CONFIG_NAME):
        shutil.copy2(os.path.join(directory, name), os.path.join(out, name))


def tokenizer_files(directory: str | os.PathLike) -> list[str]:
    """Paths of the tokenizer files saved in ``directory`` (possibly none)."""
    directory = os.fspath(directory)
    found = {os.path.join(directory, n) for n in TOKENIZER_FILES if os.path.isfile(os.path.join(directory, n))}
    found |= {p for p in glob.glob(os.path.join(directory, "tokenizer*")) if os.path.isfile(p)}
    return sorted(found)


def load_tokenizer(directory: str | os.PathLike):
    """The tokenizer saved in ``directory``; FileNotFoundError (saying what to do) when there is none."""
    from transformers import AutoTokenizer

    directory = os.fspath(directory)
    if not tokenizer_files(directory):
        raise FileNotFoundError(
            f"{directory} has no tokenizer files, so texts cannot be turned into tokens. Save the tokenizer beside "
            "the model (tokenizer.save_pretrained(checkpoint)), or give token IDs in a .jsonl file "
            "({\"input_ids\": [...]} per line)."
        )
    try:
        return AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{directory}: its tokenizer files could not be read ({type(err).__name__}: {err}); one is "
                         "damaged or incomplete. Save the tokenizer again (tokenizer.save_pretrained).") from err
    except Exception as err:  # the tokenizers library raises a bare Exception for a damaged tokenizer.json
        if type(err) is not Exception:
            raise
        raise ValueError(f"{directory}: its tokenizer files could not be read ({err}); tokenizer.json is damaged. "
                         "Save the tokenizer again (tokenizer.save_pretrained).") from err


def load_plain_model(directory: str | os.PathLike, device: str | torch.device | None = None,
                     use_safetensors: bool | None = None) -> nn.Module:
    """A model without sinks from ``directory`` with stock transformers, strictly, in eval mode.

    ``from_pretrained`` alone initialises missing tensors at random and drops unexpected ones with
    a log line; here either is an error naming the tensors, since probing or reporting on a
    partly random model would give wrong numbers without a word.
    """
    from transformers import AutoModelForCausalLM

    directory = os.fspath(directory)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True,
                                                           use_safetensors=use_safetensors)
    except Exception as err:
        if type(err).__name__ != "SafetensorError":
            raise
        raise ValueError(f"{directory}: its safetensors weights could not be read ({err}); a file is damaged or "
                         "truncated. Copy or save it again.") from err
    bad = {k: sorted(map(str, v))[:5] for k, v in info.items()
           if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise CheckpointMismatchError(
            f"{directory}: its weights do not match its config.json ({bad}); loading it would leave tensors at "
            "random values. Use the config.json saved together with these weights.")
    if device is not None:
        model.to(device)
    return model.eval()
