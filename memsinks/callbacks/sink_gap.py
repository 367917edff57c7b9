"""``SinkGapCallback``: losses and extraction with sinks on (``own``) and dropped, during training."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from memsinks.callbacks.base import METRIC_PREFIX, MemorizationCallback
from memsinks.callbacks.distributed import gather_probe_results, shard_indices
from memsinks.callbacks.probe import check_probe_sets, select_examples
from memsinks.model import has_sinks, sinks_mode
from memsinks.probes._common import check_fits_context, check_min_length, resolve_pad_token_id, sequence_id_list
from memsinks.probes.extraction import extraction as run_extraction
from memsinks.probes.inputs import ProbeSet
from memsinks.probes.sink_gap import SinkGapResult, losses_own_and_drop


class SinkGapCallback(MemorizationCallback):
    """Tracks how much of the memorized set's advantage the sinks hold (``memsinks.probes.sink_gap``).

    Logs ``memorization/sink_gap_closed`` (left out while held-out loss does not exceed the
    members' own-mode loss by ``min_gap``), ``memorization/sink_gap_loss_own``,
    ``..._loss_drop``, ``..._heldout_loss_own``, ``..._heldout_loss_drop`` and, with
    ``extraction=True``, ``memorization/sink_gap_extraction_own`` / ``..._extraction_drop``.

    ``members`` need the IDs they were trained with: a ``datasets.Dataset`` with a
    ``sequence_ids`` column, ``member_ids=[...]``, or (the default) content IDs of the given
    token lists, which equal ``assign_sequence_ids``' when the tokens are the training tokens.
    """

    METRICS = tuple(METRIC_PREFIX + "sink_gap_" + name for name in (
        "closed", "loss_own", "loss_drop", "heldout_loss_own", "heldout_loss_drop", "extraction_own",
        "extraction_drop"))

    def __init__(
        self,
        tokenizer,
        members: Any,
        heldout: Any,
        every_n_steps: int | None = 200,
        *,
        member_ids=None,
        heldout_ids=None,
        extraction: bool = True,
        prefix_len: int = 32,
        suffix_len: int = 32,
        max_examples: int | None = 128,
        batch_size: int = 32,
        min_gap: float = 1e-3,
        on_evaluate: bool = True,
        at_train_end: bool = True,
        seed: int = 0,
    ):
        super().__init__(every_n_steps, on_evaluate, at_train_end)
        members = ProbeSet.from_data(members, tokenizer, "members")
        heldout = ProbeSet.from_data(heldout, tokenizer, "heldout")
        for name, probe_set, ids in (("member_ids", members, member_ids), ("heldout_ids", heldout, heldout_ids)):
            if ids is not None:
                if len(ids) != len(probe_set):
                    raise ValueError(f"{name} has {len(ids)} IDs for {len(probe_set)} sequences.")
                probe_set.ids = sequence_id_list(ids, name)
        self.members = select_examples(members, max_examples, seed)
        self.heldout = select_examples(heldout, max_examples, seed + 1)
        if extraction:
            check_min_length(self.members.tokens, prefix_len + suffix_len, "members",
                             "Lower prefix_len / suffix_len, pass longer members, or extraction=False.")
        for name, probe_set in (("members", self.members), ("heldout", self.heldout)):
            check_min_length(probe_set.tokens, 2, name, "Every probed sequence needs at least 2 tokens.")
        self.tokenizer = tokenizer
        self.extraction = extraction
        self.prefix_len, self.suffix_len = prefix_len, suffix_len
        self.batch_size = batch_size
        self.min_gap = min_gap

    def metric_names(self, model: torch.nn.Module | None = None) -> set[str]:
        return {m for m in self.METRICS if self.extraction or "extraction" not in m}

    def check_model(self, model: torch.nn.Module) -> None:
        if not has_sinks(model):
            raise ValueError("SinkGapCallback compares sinks on and dropped, but the model has no sinks "
                             "(attach them with memsinks.add_sinks before training).")
        if self.extraction:
            check_fits_context(model, self.prefix_len, self.suffix_len)
        check_probe_sets(model, members=self.members, heldout=self.heldout)

    def _local(self, model: torch.nn.Module) -> dict[str, np.ndarray]:
        """This rank's per-example losses (and extraction hits) with sinks own and dropped."""
        members = self.members.subset(shard_indices(len(self.members)).tolist())
        heldout = self.heldout.subset(shard_indices(len(self.heldout)).tolist())
        local: dict[str, np.ndarray] = {}
        for label, part in (("member", members), ("heldout", heldout)):
            if len(part):
                losses = losses_own_and_drop(model, part.tokens, part.ids_or_content(), self.batch_size)
                local[f"{label}_loss_own"], local[f"{label}_loss_drop"] = losses["own"], losses["drop"]
        if self.extraction and len(members):
            pad = resolve_pad_token_id(model, getattr(self.tokenizer, "pad_token_id", None))
            for mode, ids in (("own", members.ids_or_content()), ("drop", None)):
                with sinks_mode(model, mode):
                    result = run_extraction(model, members.tokens, self.prefix_len, self.suffix_len,
                                            sequence_ids=ids, batch_size=self.batch_size, pad_token_id=pad)
                local[f"member_extracted_{mode}"] = result.per_example["exact_match"]
        return local

    def compute(self, model: torch.nn.Module, state) -> dict:
        self.check_model(model)
        gap = SinkGapResult.from_per_example(gather_probe_results(lambda: self._local(model)), min_gap=self.min_gap)
        return {
            METRIC_PREFIX + "sink_gap_closed": gap.closed,
            METRIC_PREFIX + "sink_gap_loss_own": gap.loss_own,
            METRIC_PREFIX + "sink_gap_loss_drop": gap.loss_drop,
            METRIC_PREFIX + "sink_gap_heldout_loss_own": gap.heldout_loss_own,
            METRIC_PREFIX + "sink_gap_heldout_loss_drop": gap.heldout_loss_drop,
            METRIC_PREFIX + "sink_gap_extraction_own": gap.extraction_own,
            METRIC_PREFIX + "sink_gap_extraction_drop": gap.extraction_drop,
        }
