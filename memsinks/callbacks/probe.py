"""``ProbeCallback``: extraction, membership inference and (with sinks) the sink gap during training."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from memsinks.callbacks.base import METRIC_PREFIX, MemorizationCallback
from memsinks.callbacks.distributed import gather_probe_results, rank_and_world, shard_indices
from memsinks.model import has_sinks, sinks_mode
from memsinks.probes._common import (
    check_fits_context, check_min_length, check_same_tokenizer, check_token_range, resolve_pad_token_id,
    sinks_mode_in_force, vocabulary_size,
)
from memsinks.probes.extraction import ExtractionResult, extraction
from memsinks.probes.inputs import ProbeSet
from memsinks.probes.likelihood import sequence_losses
from memsinks.probes.membership import SCORE_NAMES, MembershipResult, membership_scores
from memsinks.probes.memorized_bits import MemorizedBitsResult, memorized_bits
from memsinks.probes.sink_gap import SinkGapResult

logger = logging.getLogger("memsinks")

PROBES = ("extraction", "membership", "sink_gap", "memorized_bits")
DEFAULT_PROBES = ("extraction", "membership", "sink_gap")
_EXTRACTION_METRICS = ("extraction_exact", "token_accuracy", "extraction_ngram_share")


def _membership_metrics(scores) -> list[str]:
    return [f"mia_{kind}_{score}" for kind in ("auc", "tpr_at_1pct_fpr") for score in scores]


def check_probe_sets(model: torch.nn.Module, **probe_sets: ProbeSet | None) -> None:
    """Raise, before training, if a probe set has token IDs outside the model's vocabulary (named by position)."""
    vocab = vocabulary_size(model)
    for name, probe_set in probe_sets.items():
        if probe_set is not None:
            check_token_range(probe_set.tokens, vocab, lambda i, p=probe_set, n=name: p.where(i, n))


def select_examples(probe_set: ProbeSet, max_examples: int | None, seed: int) -> ProbeSet:
    """At most ``max_examples`` of the set, drawn without replacement by ``seed`` (the same on every rank
    and every run), in their original order."""
    if max_examples is None or len(probe_set) <= max_examples:
        return probe_set
    chosen = np.sort(np.random.default_rng(seed).choice(len(probe_set), size=max_examples, replace=False))
    return probe_set.subset(chosen.tolist())


class ProbeCallback(MemorizationCallback):
    """Runs memorization probes on a fixed probe set while the stock ``Trainer`` trains.

    ``ProbeCallback(tokenizer, members=..., nonmembers=..., every_n_steps=200)`` probes every 200
    optimizer steps, at every evaluation and at the end of training, and logs (through
    ``Trainer.log``, so into ``state.log_history`` and every ``report_to`` integration):

    - ``memorization/extraction_exact``, ``memorization/token_accuracy``,
      ``memorization/extraction_ngram_share`` (members; ``prefix_len`` + ``suffix_len`` tokens);
    - ``memorization/mia_auc_{loss,zlib,minkprob}`` (``_reference`` with a ``reference_model``)
      and ``memorization/mia_tpr_at_1pct_fpr_{...}`` (members vs non-members);
    - on a model with sinks, ``memorization/sink_gap_closed`` (non-members as the held-out set;
      left out while there is no loss gap to close);
    - with ``"memorized_bits"`` in ``probes``, ``memorization/memorized_bits`` (members, summed).

    Args:
        tokenizer: tokenizes text members / non-members and decodes for the zlib score.
        members, nonmembers: lists of strings or token-ID lists, or ``datasets.Dataset`` (an
            ``input_ids`` or ``text`` column; a ``sequence_ids`` column gives the IDs that
            ``own`` mode and the sink gap route by, else content IDs are used, which match
            ``memsinks.assign_sequence_ids`` when the tokens are the training tokens).
        max_examples: probe at most this many members and as many non-members (a fixed random
            subset, chosen by ``seed``).
        sinks_mode: the sinks mode for extraction and membership inference on a model with
            sinks; None uses the model's configured eval mode (``drop``: the model you ship).
        log_examples: opt in to logging up to this many extracted members per probe, each
            redacted to the first ``redact_to`` tokens of its prompt. Off by default: logging
            memorized text would leak the secrets the probe guards.

    Work is split across ranks under ``torch.distributed`` and gathered; every rank logs the
    same numbers. The callback keeps no state across checkpoints: when it probes depends on
    ``global_step`` and which examples it probes on ``seed``, so a resumed run continues the
    same series.
    """

    METRICS = tuple(METRIC_PREFIX + name for name in (*_EXTRACTION_METRICS, *_membership_metrics(SCORE_NAMES),
                                                      "memorized_bits", "sink_gap_closed"))

    def __init__(
        self,
        tokenizer,
        members: Any,
        nonmembers: Any = None,
        every_n_steps: int | None = 200,
        *,
        probes: Sequence[str] = DEFAULT_PROBES,
        on_evaluate: bool = True,
        at_train_end: bool = True,
        prefix_len: int = 32,
        suffix_len: int = 32,
        max_examples: int | None = 128,
        batch_size: int = 32,
        reference_model: torch.nn.Module | None = None,
        reference_tokenizer=None,
        sinks_mode: str | None = None,
        num_samples: int = 0,
        top_k: int = 40,
        log_examples: int = 0,
        redact_to: int = 8,
        seed: int = 0,
    ):
        super().__init__(every_n_steps, on_evaluate, at_train_end)
        unknown = sorted(set(probes) - set(PROBES))
        if unknown or not probes:
            raise ValueError(f"Unknown or no probes {unknown or list(probes)}; choose from {PROBES}.")
        self.probes = tuple(dict.fromkeys(probes))
        self.tokenizer = tokenizer
        self.members = select_examples(ProbeSet.from_data(members, tokenizer, "members"), max_examples, seed)
        needs_nonmembers = {"membership", "sink_gap"} & set(self.probes)
        if nonmembers is None and needs_nonmembers:
            raise ValueError(
                f"The probes {sorted(needs_nonmembers)} compare members with non-members; pass nonmembers=..., or "
                "probes=('extraction',) to run extraction alone."
            )
        self.nonmembers = None if nonmembers is None else select_examples(
            ProbeSet.from_data(nonmembers, tokenizer, "nonmembers"), max_examples, seed + 1)
        if "extraction" in self.probes:
            check_min_length(
                self.members.tokens, prefix_len + suffix_len, "members",
                f"Extraction prompts with prefix_len={prefix_len} tokens and compares suffix_len={suffix_len}; "
                "pass members at least that long, or lower prefix_len / suffix_len.",
            )
        for name, probe_set in (("members", self.members), ("nonmembers", self.nonmembers)):
            if probe_set is not None:
                check_min_length(probe_set.tokens, 2, name, "Every probed sequence needs at least 2 tokens.")
        check_same_tokenizer(tokenizer, reference_tokenizer)
        if log_examples < 0 or redact_to < 1:
            raise ValueError("log_examples must be >= 0 and redact_to >= 1.")
        self.prefix_len, self.suffix_len = prefix_len, suffix_len
        self.batch_size = batch_size
        self.reference_model = reference_model
        self.sinks_mode = sinks_mode
        self.num_samples, self.top_k = num_samples, top_k
        self.log_examples, self.redact_to = log_examples, redact_to
        self.seed = seed

    def metric_names(self, model: torch.nn.Module | None = None) -> set[str]:
        names: list[str] = []
        if "extraction" in self.probes:
            names += _EXTRACTION_METRICS
        if "membership" in self.probes:
            names += _membership_metrics(["loss", "minkprob"] + (["zlib"] if self.tokenizer is not None else [])
                                         + (["reference"] if self.reference_model is not None else []))
        if "memorized_bits" in self.probes:
            names.append("memorized_bits")
        if "sink_gap" in self.probes and (model is None or has_sinks(model)):
            names.append("sink_gap_closed")
        return {METRIC_PREFIX + n for n in names}

    def check_model(self, model: torch.nn.Module) -> None:
        if self.sinks_mode is not None and not has_sinks(model):
            raise ValueError(f"ProbeCallback(sinks_mode={self.sinks_mode!r}) needs a model with sinks.")
        if "extraction" in self.probes:
            check_fits_context(model, self.prefix_len, self.suffix_len)
        check_probe_sets(model, members=self.members, nonmembers=self.nonmembers)

    def _mode(self, model: torch.nn.Module):
        return sinks_mode(model, self.sinks_mode if has_sinks(model) else None)

    def _local(self, model: torch.nn.Module) -> dict[str, np.ndarray]:
        """This rank's per-example numbers, keyed ``<probe>/<quantity>``."""
        members = self.members.subset(shard_indices(len(self.members)).tolist())
        nonmembers = None
        if self.nonmembers is not None:
            nonmembers = self.nonmembers.subset(shard_indices(len(self.nonmembers)).tolist())
        pad = resolve_pad_token_id(model, getattr(self.tokenizer, "pad_token_id", None))
        out: dict[str, np.ndarray] = {}
        with self._mode(model):
            mode_in_force = sinks_mode_in_force(model)
            if "extraction" in self.probes and len(members):
                result = extraction(model, members.tokens, self.prefix_len, self.suffix_len, sequence_ids=members.ids,
                                    batch_size=self.batch_size, pad_token_id=pad, num_samples=self.num_samples,
                                    top_k=self.top_k, seed=self.seed)
                for key in ("exact_match", "token_accuracy", "ngram_share"):
                    out[f"extraction/{key}"] = result.per_example[key]
            if "membership" in self.probes:
                for label, part in (("member", members), ("nonmember", nonmembers)):
                    if len(part):
                        scores = membership_scores(model, part.tokens, self.reference_model, part.ids,
                                                   self.batch_size, tokenizer=self.tokenizer, pad_token_id=pad)
                        out.update({f"{label}/{name}": v for name, v in scores.items()})
            if "memorized_bits" in self.probes and len(members):
                bits = memorized_bits(model, members.tokens, self.reference_model, members.ids, self.batch_size,
                                      pad_token_id=pad)
                out["bits/bits"] = bits.per_example["bits"]
        if "sink_gap" in self.probes and has_sinks(model):
            # probed in drop mode, the membership "loss" score is already minus the drop-mode loss
            reuse_drop = "membership" in self.probes and mode_in_force == "drop"
            for label, scored_as, part in (("member", "member", members), ("heldout", "nonmember", nonmembers)):
                if not len(part):
                    continue
                with sinks_mode(model, "own"):
                    out[f"gap/{label}_loss_own"] = sequence_losses(model, part.tokens, part.ids_or_content(),
                                                                   self.batch_size)
                if reuse_drop:
                    out[f"gap/{label}_loss_drop"] = -out[f"{scored_as}/loss"]
                else:
                    with sinks_mode(model, "drop"):
                        out[f"gap/{label}_loss_drop"] = sequence_losses(model, part.tokens, None, self.batch_size)
        return out

    def compute(self, model: torch.nn.Module, state) -> dict:
        gathered = gather_probe_results(lambda: self._local(model))
        metrics: dict = {}
        if "extraction" in self.probes:
            result = ExtractionResult.from_per_example(
                {key: gathered[f"extraction/{key}"] for key in ("exact_match", "token_accuracy", "ngram_share")},
                self.prefix_len, self.suffix_len, self.num_samples,
            )
            metrics[METRIC_PREFIX + "extraction_exact"] = result.exact_match
            metrics[METRIC_PREFIX + "token_accuracy"] = result.token_accuracy
            metrics[METRIC_PREFIX + "extraction_ngram_share"] = result.ngram_share
            self._report_examples(gathered, state)
        if "membership" in self.probes:
            mia = MembershipResult.from_scores(
                {k.split("/", 1)[1]: v for k, v in gathered.items() if k.startswith("member/")},
                {k.split("/", 1)[1]: v for k, v in gathered.items() if k.startswith("nonmember/")},
            )
            for name, auc in mia.auc.items():
                metrics[f"{METRIC_PREFIX}mia_auc_{name}"] = auc
            for name, tpr in mia.tpr_at_fpr_1pct.items():
                metrics[f"{METRIC_PREFIX}mia_tpr_at_1pct_fpr_{name}"] = tpr
        if "memorized_bits" in self.probes:
            bits = MemorizedBitsResult.from_per_example({"bits": gathered["bits/bits"]},
                                                        "uniform" if self.reference_model is None else "model", 0)
            metrics[METRIC_PREFIX + "memorized_bits"] = bits.total_bits
        if "sink_gap" in self.probes and has_sinks(model):
            gap = SinkGapResult.from_per_example({k.split("/", 1)[1]: v for k, v in gathered.items()
                                                  if k.startswith("gap/")})
            metrics[METRIC_PREFIX + "sink_gap_closed"] = gap.closed
        return metrics

    def _report_examples(self, gathered: dict, state) -> None:
        """Opt-in: name extracted members, each shown only as the start of its prompt."""
        if not self.log_examples or rank_and_world()[0] != 0:
            return
        hits = np.flatnonzero(gathered["extraction/exact_match"])[: self.log_examples]
        for index in hits:  # gathered in rank order, so positions are indices into self.members
            shown = self.members.tokens[index][: min(self.redact_to, self.prefix_len)]
            text = self.tokenizer.decode(shown) if self.tokenizer is not None else str(shown)
            logger.warning("memsinks: step %d: probed member %d was extracted verbatim; its prompt starts %r "
                           "(redacted to %d tokens).", state.global_step, index, text, len(shown))
