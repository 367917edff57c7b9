"""Sink gap: how much of a memorized set's advantage over held-out text sits in the sinks.

With sinks on (``own``: each sequence routed to its own sinks) a memorized (repeated) set has
a lower loss than held-out text; with sinks dropped (``drop``, the shipped model) that
advantage should shrink. The share of the gap that dropping closes,

    closed = (L_drop(rep) - L_own(rep)) / (L_heldout - L_own(rep)),

is 0 when the memorization sits entirely outside the sinks and 1 when dropping them brings
the memorized set to held-out level (Ghosal et al. 2025). ``L_heldout`` is the held-out loss
in ``own`` mode (each held-out sequence routed by its own, never-trained ID).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from torch import nn

from memsinks.data import content_id
from memsinks.model import has_sinks, sinks_mode
from memsinks.probes._common import as_token_lists, check_finite, check_min_length, sequence_id_list
from memsinks.probes.extraction import extraction as run_extraction
from memsinks.probes.likelihood import sequence_losses
from memsinks.unwrap import unwrap_model

_MEMBER_KEYS = ("member_loss_own", "member_loss_drop")
_HELDOUT_KEYS = ("heldout_loss_own", "heldout_loss_drop")
_EXTRACTION_KEYS = ("member_extracted_own", "member_extracted_drop")


@dataclass
class SinkGapResult:
    """Losses (mean per-sequence NLL, nats/token) and extraction rates with sinks on and dropped.

    ``closed`` is None when the held-out loss does not exceed the memorized set's own-mode
    loss by at least ``min_gap`` (no memorization gap to close, e.g. early in training).
    ``extraction_own`` / ``extraction_drop`` are None when extraction was not run.
    """

    closed: float | None
    loss_own: float
    loss_drop: float
    heldout_loss_own: float
    heldout_loss_drop: float
    extraction_own: float | None
    extraction_drop: float | None
    per_example: dict = field(repr=False)
    min_gap: float = 1e-3

    @classmethod
    def from_per_example(cls, per_example: dict, min_gap: float = 1e-3) -> "SinkGapResult":
        for key in _MEMBER_KEYS + _HELDOUT_KEYS:
            if len(per_example[key]) == 0:
                raise ValueError(f"No sequences to aggregate the sink gap over ({key} is empty).")
        m = {k: float(np.mean(per_example[k])) for k in _MEMBER_KEYS + _HELDOUT_KEYS}
        gap = m["heldout_loss_own"] - m["member_loss_own"]
        closed = (m["member_loss_drop"] - m["member_loss_own"]) / gap if gap > min_gap else None
        has_extraction = all(k in per_example for k in _EXTRACTION_KEYS)
        return cls(
            closed=None if closed is None else float(closed),
            loss_own=m["member_loss_own"], loss_drop=m["member_loss_drop"],
            heldout_loss_own=m["heldout_loss_own"], heldout_loss_drop=m["heldout_loss_drop"],
            extraction_own=float(np.mean(per_example["member_extracted_own"])) if has_extraction else None,
            extraction_drop=float(np.mean(per_example["member_extracted_drop"])) if has_extraction else None,
            per_example=per_example, min_gap=min_gap,
        )

    def to_dict(self) -> dict:
        return {
            "closed": self.closed,
            "loss_own": self.loss_own,
            "loss_drop": self.loss_drop,
            "heldout_loss_own": self.heldout_loss_own,
            "heldout_loss_drop": self.heldout_loss_drop,
            "extraction_own": self.extraction_own,
            "extraction_drop": self.extraction_drop,
            "n_members": int(len(self.per_example["member_loss_own"])),
            "n_heldout": int(len(self.per_example["heldout_loss_own"])),
        }


def losses_own_and_drop(
    model: nn.Module, sequences: Sequence[Sequence[int]], sequence_ids: Sequence[int], batch_size: int = 32,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Per-sequence mean NLL with each sequence's own sinks (``own``, routed by ``sequence_ids``) and
    with all sinks dropped: ``{"own": (N,), "drop": (N,)}``."""
    out = {}
    for mode, ids in (("own", list(sequence_ids)), ("drop", None)):
        with sinks_mode(model, mode):
            out[mode] = sequence_losses(model, sequences, ids, batch_size=batch_size, progress=progress)
    return out


def sink_gap(
    model: nn.Module,
    members: Sequence[Sequence[int]],
    heldout: Sequence[Sequence[int]],
    member_ids: Sequence[int] | None,
    heldout_ids: Sequence[int] | None = None,
    prefix_len: int = 32,
    suffix_len: int = 32,
    batch_size: int = 32,
    pad_token_id: int | None = None,
    *,
    extraction: bool = True,
    min_gap: float = 1e-3,
    progress: bool = False,
) -> SinkGapResult:
    """Loss (and extraction) on ``members`` and ``heldout`` with sinks in ``own`` and ``drop`` mode.

    Args:
        members: the memorized (training, typically repeated) set, token-ID lists.
        heldout: never-trained sequences.
        member_ids: the members' sequence IDs from training (``own`` mode routes by them):
            ``[memsinks.content_id(s) for s in members]`` for content IDs, or the ``key_id`` of
            each document when training used ``assign_sequence_ids(from_column=...)``.
        heldout_ids: default ``memsinks.content_id`` of each held-out sequence.
        extraction: also extract members (``prefix_len`` + ``suffix_len``) in both modes.
    """
    model = unwrap_model(model)
    if not has_sinks(model):
        raise ValueError("The sink gap compares sinks on and dropped; this model has no sinks (memsinks.add_sinks).")
    members = as_token_lists(members, "members")
    heldout = as_token_lists(heldout, "heldout")
    if member_ids is None:
        raise ValueError(
            "The sink gap needs the members' sequence IDs: 'own' mode routes each sequence to the sinks of the ID it "
            "was trained with. Pass member_ids=[memsinks.content_id(s) for s in members] for content IDs "
            "(assign_sequence_ids' default), or the key_id of each document for document-level IDs."
        )
    member_ids = sequence_id_list(member_ids, "member_ids")
    if len(member_ids) != len(members):
        raise ValueError(f"Got {len(member_ids)} member_ids for {len(members)} members; give one ID per member.")
    heldout_ids = [content_id(s) for s in heldout] if heldout_ids is None else sequence_id_list(heldout_ids,
                                                                                                 "heldout_ids")
    if len(heldout_ids) != len(heldout):
        raise ValueError(f"Got {len(heldout_ids)} heldout_ids for {len(heldout)} held-out sequences.")
    if extraction:
        check_min_length(members, prefix_len + suffix_len, "members",
                         "Lower prefix_len / suffix_len, drop the short members, or pass extraction=False.")

    per_example: dict = {}
    for name, seqs, ids in (("member", members, member_ids), ("heldout", heldout, heldout_ids)):
        losses = losses_own_and_drop(model, seqs, ids, batch_size=batch_size, progress=progress)
        per_example[f"{name}_loss_own"], per_example[f"{name}_loss_drop"] = losses["own"], losses["drop"]
    if extraction:
        for mode, ids in (("own", member_ids), ("drop", None)):
            with sinks_mode(model, mode):
                result = run_extraction(model, members, prefix_len, suffix_len, sequence_ids=ids,
                                        batch_size=batch_size, pad_token_id=pad_token_id, progress=progress)
            per_example[f"member_extracted_{mode}"] = result.per_example["exact_match"]
    check_finite(per_example, "sink gap")
    return SinkGapResult.from_per_example(per_example, min_gap=min_gap)
