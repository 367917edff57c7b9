"""Reading safetensors files that may be damaged: the header is checked first, and every error names the file.

A truncated copy, a 0-byte file left by a full disk or a file overwritten with something else
would otherwise fail deep inside the safetensors library (or, read lazily, half-way through a
load) with a message that does not say which file is bad.
"""

from __future__ import annotations

import json
import os

import torch

from memsinks.errors import DamagedCheckpointError


def check_safetensors(path: str) -> dict[str, str]:
    """Check that ``path`` is a complete safetensors file and return its string metadata.

    Reads only the header: a file that is empty, truncated, or whose header is not the
    safetensors JSON is a DamagedCheckpointError naming the file, before any tensor is read.
    """
    size = os.path.getsize(path)
    damaged = f"{path} is damaged"
    fix = "Re-copy or re-save it; memsinks does not load a partial checkpoint."
    if size < 8:
        raise DamagedCheckpointError(f"{damaged}: it has {size} bytes, fewer than a safetensors header (empty or "
                                     f"truncated). {fix}")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8:
            raise DamagedCheckpointError(f"{damaged}: its header claims {n} bytes but the file has {size} (truncated, "
                                         f"or not a safetensors file). {fix}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict):
        raise DamagedCheckpointError(f"{damaged}: its header is not safetensors JSON (overwritten, or not a "
                                     f"safetensors file). {fix}")
    need = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise DamagedCheckpointError(f"{damaged}: tensor {name!r} has no valid data offsets in the header. {fix}")
        need = max(need, offsets[1])
    if need != size - 8 - n:
        raise DamagedCheckpointError(f"{damaged}: its tensors span {need} bytes but the file holds {size - 8 - n} "
                                     f"after the header (truncated or appended to). {fix}")
    metadata = header.get("__metadata__")
    return metadata if isinstance(metadata, dict) else {}


def load_safetensors(path: str, prefixes: tuple[str, ...] = ("",)) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` whose names start with one of ``prefixes``; a read error names the file."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys() if key.startswith(prefixes)}
    except Exception as err:  # safetensors raises its own error types for every kind of bad file
        raise DamagedCheckpointError(f"{path} is damaged and could not be read ({type(err).__name__}: {err}).") from err
