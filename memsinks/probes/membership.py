"""Membership inference: score each sequence, then separate training members from non-members.

Scores (higher means "more likely a member"):

- ``loss``: minus the mean token NLL (Yeom et al. 2018).
- ``zlib``: minus the mean token NLL divided by the zlib-compressed length of the text in
  bytes (Carlini et al. 2021): low loss on text that is not simply repetitive. It needs the
  tokenizer to turn tokens back into text; without one it is left out (with a warning), since
  compressing token IDs instead would give a different score under the same name.
- ``minkprob``: the mean log-probability of the k% least likely tokens, k = 20% (Min-K% Prob,
  Shi et al. 2024): members have fewer surprising tokens.
- ``reference``: mean log-likelihood under the model minus under a reference model with the
  same tokenizer, e.g. the base model before fine-tuning (Carlini et al. 2021; Mireshghallah
  et al. 2022).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from torch import nn

from memsinks.probes._common import (
    as_token_lists, check_finite, check_same_vocabulary, resolve_sequence_ids,
)
from memsinks.probes.likelihood import token_nlls
from memsinks.probes.roc import roc_auc, tpr_at_fpr
from memsinks.unwrap import unwrap_model

logger = logging.getLogger("memsinks")
SCORE_NAMES = ("loss", "zlib", "minkprob", "reference")
_said_no_zlib = False


def _zlib_bytes(tokens: list[int], tokenizer) -> int:
    return len(zlib.compress(tokenizer.decode(tokens).encode("utf-8")))


def _say_no_zlib() -> None:
    global _said_no_zlib
    if not _said_no_zlib:
        _said_no_zlib = True
        logger.warning("memsinks: no tokenizer was given, so the zlib membership score (which compresses the text) "
                       "is left out; pass tokenizer=... to get it (said once).")


def _min_k_mean_logprob(nll: np.ndarray, k: float) -> float:
    count = max(1, int(len(nll) * k))
    return float(-np.mean(np.sort(nll)[::-1][:count]))


def membership_scores(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    reference_model: nn.Module | None = None,
    sequence_ids: Sequence[int] | None = None,
    batch_size: int = 32,
    *,
    tokenizer=None,
    minkprob_k: float = 0.2,
    pad_token_id: int | None = 0,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Per-sequence membership scores: a dict score name -> float64 array (N,).

    ``reference`` is present only with a ``reference_model``; ``zlib`` only with a
    ``tokenizer``, which decodes the tokens into the text it compresses.
    """
    if not 0.0 < minkprob_k <= 1.0:
        raise ValueError(f"minkprob_k must be in (0, 1]; got {minkprob_k}.")
    sequences = as_token_lists(sequences, "sequences")
    model = unwrap_model(model)
    ids = resolve_sequence_ids(model, sequences, sequence_ids)
    nlls = token_nlls(model, sequences, ids, batch_size=batch_size, pad_token_id=pad_token_id, progress=progress)
    mean_nll = np.array([x.mean() for x in nlls])
    scores = {"loss": -mean_nll}
    if tokenizer is not None:
        scores["zlib"] = -mean_nll / np.array([_zlib_bytes(s, tokenizer) for s in sequences], dtype=np.float64)
    else:
        _say_no_zlib()
    scores["minkprob"] = np.array([_min_k_mean_logprob(x, minkprob_k) for x in nlls])
    if reference_model is not None:
        reference_model = unwrap_model(reference_model)
        check_same_vocabulary(model, reference_model)
        ref_ids = resolve_sequence_ids(reference_model, sequences, sequence_ids)
        ref = token_nlls(reference_model, sequences, ref_ids, batch_size=batch_size, pad_token_id=pad_token_id,
                         progress=progress)
        scores["reference"] = np.array([r.mean() for r in ref]) - mean_nll
    check_finite(scores, "membership scores")
    return scores


@dataclass
class MembershipResult:
    """How well each score separates members from non-members.

    ``auc``: score name -> ROC AUC (0.5 is chance, 1.0 perfect separation).
    ``tpr_at_fpr_1pct`` / ``tpr_at_fpr_0_1pct``: score name -> TPR at FPR 1% / 0.1%.
    ``member_scores`` / ``nonmember_scores``: score name -> per-example float64 arrays.
    """

    auc: dict
    tpr_at_fpr_1pct: dict
    tpr_at_fpr_0_1pct: dict
    member_scores: dict = field(repr=False)
    nonmember_scores: dict = field(repr=False)

    @classmethod
    def from_scores(cls, member_scores: dict, nonmember_scores: dict) -> "MembershipResult":
        names = [n for n in SCORE_NAMES if n in member_scores and n in nonmember_scores]
        if not names:
            raise ValueError("No membership score is present for both members and non-members.")
        return cls(
            auc={n: roc_auc(member_scores[n], nonmember_scores[n]) for n in names},
            tpr_at_fpr_1pct={n: tpr_at_fpr(member_scores[n], nonmember_scores[n], 0.01) for n in names},
            tpr_at_fpr_0_1pct={n: tpr_at_fpr(member_scores[n], nonmember_scores[n], 0.001) for n in names},
            member_scores=member_scores, nonmember_scores=nonmember_scores,
        )

    @property
    def n_members(self) -> int:
        return int(len(next(iter(self.member_scores.values()))))

    @property
    def n_nonmembers(self) -> int:
        return int(len(next(iter(self.nonmember_scores.values()))))

    def to_dict(self) -> dict:
        return {
            "auc": dict(self.auc),
            "tpr_at_fpr_1pct": dict(self.tpr_at_fpr_1pct),
            "tpr_at_fpr_0_1pct": dict(self.tpr_at_fpr_0_1pct),
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
        }


def membership_inference(
    model: nn.Module,
    members: Sequence[Sequence[int]],
    nonmembers: Sequence[Sequence[int]],
    reference_model: nn.Module | None = None,
    member_ids: Sequence[int] | None = None,
    nonmember_ids: Sequence[int] | None = None,
    batch_size: int = 32,
    *,
    tokenizer=None,
    minkprob_k: float = 0.2,
    pad_token_id: int | None = 0,
    progress: bool = False,
) -> MembershipResult:
    """Score members and non-members and summarise each score's ROC (see the module docstring).

    Args:
        members, nonmembers: token-ID lists of at least 2 tokens (the first token is context).
        reference_model: adds the ``reference`` score; must share the model's tokenizer.
        member_ids, nonmember_ids: IDs for a model with sinks in ``own`` mode (default: content IDs).
    """
    members = as_token_lists(members, "members")
    nonmembers = as_token_lists(nonmembers, "nonmembers")
    common = dict(tokenizer=tokenizer, minkprob_k=minkprob_k, pad_token_id=pad_token_id, progress=progress)
    member_scores = membership_scores(model, members, reference_model, member_ids, batch_size, **common)
    nonmember_scores = membership_scores(model, nonmembers, reference_model, nonmember_ids, batch_size, **common)
    return MembershipResult.from_scores(member_scores, nonmember_scores)
