"""From a collated batch to the forward's arguments, the targets of each row's loss, and each row's privacy unit.

The private step calls the model itself (no labels: it computes each row's own loss), so it
decides what the forward gets: only the arguments the forward accepts, the ``sequence_ids``
only if the model takes them, ``use_cache=False``, and per-row ``position_ids``.

A row's gradient must not depend on the other rows of its batch, or one unit's clipped
gradient would carry information about another (the sensitivity bound C would not hold).
Padding is where that goes wrong: a left-padded row (Llama and Gemma tokenizers pad on the
left) is shifted by as many positions as the longest row of its batch adds, and its first
real token becomes a target predicted from a pad. So, whatever side the collator padded on,
positions count real tokens only (``attention_mask.cumsum - 1``), and a target counts only
if the token it is predicted from is real.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from memsinks.data import SEQUENCE_IDS
from memsinks.model import has_sinks

LABEL_COLUMNS = ("labels", "label", "label_ids")


class ForwardInputs:
    """Callable: a collated batch -> the forward's kwargs.

    Args:
        model: the (unwrapped) model, whose forward signature decides what it is given.
    Attributes:
        accepted: names the forward accepts, or None if it takes ``**kwargs``.
        takes_ids: whether the forward takes ``sequence_ids`` (a model with sinks does).
        position_ids: pass per-row ``position_ids`` (set when the default broadcasts).
    """

    def __init__(self, model: nn.Module):
        params = inspect.signature(model.forward).parameters
        takes_ids = SEQUENCE_IDS in params or has_sinks(model)
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            self.accepted = None
        else:
            self.accepted = set(params)
        self.takes_ids = takes_ids or (self.accepted is not None and SEQUENCE_IDS in self.accepted)
        self.position_ids = False

    def __call__(self, batch: dict) -> dict:
        kwargs = {k: v for k, v in batch.items() if k not in LABEL_COLUMNS and k != SEQUENCE_IDS}
        if self.accepted is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in self.accepted}
        if self.takes_ids and SEQUENCE_IDS in batch:
            kwargs[SEQUENCE_IDS] = batch[SEQUENCE_IDS]
        if "position_ids" not in kwargs:
            positions = self._positions(batch)
            if positions is not None:
                kwargs["position_ids"] = positions
        if self.accepted is None or "use_cache" in self.accepted:
            kwargs["use_cache"] = False
        return kwargs

    def _positions(self, batch: dict) -> torch.Tensor | None:
        """(B, T) positions counting each row's real tokens; None where the model's default is right."""
        input_ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        takes = self.accepted is None or "position_ids" in self.accepted
        if mask is not None and _pads_before_tokens(mask):
            if not takes:
                raise ValueError(
                    "The batch is padded on the left but the model's forward takes no position_ids, so each row's "
                    "positions would depend on the longest row of its batch. Pad on the right "
                    "(tokenizer.padding_side = 'right') for DP training.")
            return (mask.long().cumsum(-1) - 1).clamp(min=0)
        if self.position_ids:
            rows, length = input_ids.shape[:2]
            return torch.arange(length, device=input_ids.device).expand(rows, length)
        return None

    @staticmethod
    def labels(batch: dict) -> torch.Tensor:
        """The batch's labels with every target predicted from a padding position masked (-100)."""
        labels = batch["labels"]
        mask = batch.get("attention_mask")
        if mask is None:
            return labels
        labels = labels.clone()
        labels[:, 1:][mask[:, :-1].to(labels.device) == 0] = -100
        return labels


def _pads_before_tokens(mask: torch.Tensor) -> bool:
    """Whether some row has a masked position before a real one (left padding, or gaps)."""
    return bool((mask[:, 1:] > mask[:, :-1]).any())


def units_of(batch: dict, privacy_unit: str) -> tuple[torch.Tensor, int]:
    """(B,) unit index of each row and the number of units in a physical batch.

    Per example every row is its own unit; per sequence ID, rows sharing an ID form one.
    """
    rows = batch["input_ids"].shape[0]
    device = batch["input_ids"].device
    if privacy_unit == "example":
        return torch.arange(rows, device=device), rows
    ids = batch.get(SEQUENCE_IDS)
    if ids is None:
        raise ValueError(f"A training batch has no '{SEQUENCE_IDS}' (privacy_unit='sequence_id').")
    ids = torch.as_tensor(ids, device=device)
    if ids.dim() == 2:
        row_ids = ids.max(dim=1).values
        if not bool(((ids == row_ids[:, None]) | (ids == 0)).all()):
            raise ValueError("A row holds tokens of several sequence IDs; user-level DP needs one ID per row.")
        ids = row_ids
    _, index = torch.unique(ids, return_inverse=True)
    return index, int(index.max()) + 1 if index.numel() else 0
