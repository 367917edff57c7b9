"""Canary exposure (Carlini et al. 2019, "The Secret Sharer").

A canary is a sequence ``prefix + secret + suffix`` planted in the training data, the secret
drawn from a randomness space R (for example six digits, |R| = 10^6). Rank every candidate
secret by the model's log-perplexity of the whole canary; the exposure of the true secret is

    exposure = log2 |R| - log2 rank          (rank 1 = most likely; so at most log2 |R| bits)

Small spaces are enumerated exactly. For large ones the log-perplexities of sampled
candidates are fitted with a skew-normal and exposure = -log2 CDF(log-perplexity of the
canary) (the paper's Sec. 4.3 estimate), capped at log2 |R|.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from torch import nn

from memsinks.data import content_id
from memsinks.probes._common import check_finite, sinks_mode_in_force
from memsinks.probes.inputs import is_int, token_list
from memsinks.probes.inputs import sequence_id as checked_sequence_id
from memsinks.probes.likelihood import token_nlls
from memsinks.probes.skewnormal import SkewNormal
from memsinks.unwrap import unwrap_model


@dataclass
class Canary:
    """A canary as text: ``prefix + secret + suffix``, the secret's characters drawn from ``alphabet``."""

    prefix: str
    secret: str
    suffix: str = ""
    alphabet: str = "0123456789"

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("A canary needs a non-empty secret.")
        missing = sorted(set(self.secret) - set(self.alphabet))
        if missing:
            raise ValueError(f"The canary's secret has characters {missing} outside its alphabet {self.alphabet!r}.")

    @property
    def text(self) -> str:
        return self.prefix + self.secret + self.suffix

    @classmethod
    def from_text(cls, text: str, pattern: str = r"\d+", alphabet: str = "0123456789") -> "Canary":
        """Split ``text`` at the last match of ``pattern`` (default: the last run of digits), which is the secret."""
        matches = list(re.finditer(pattern, text))
        if not matches:
            raise ValueError(
                f"No secret matching {pattern!r} in a canary line ({len(text)} characters); give the pattern that "
                "finds the secret (for example --canary-pattern '[0-9]{6}')."
            )
        m = matches[-1]
        return cls(prefix=text[:m.start()], secret=m.group(0), suffix=text[m.end():], alphabet=alphabet)


@dataclass
class ExposureResult:
    """Exposure of one canary in bits, and how it was obtained.

    ``method`` is ``"enumeration"`` (``rank`` is exact) or ``"skew_normal"`` (``rank`` is None,
    ``fit`` holds the fitted distribution). ``candidate_nlls`` are the scored candidates'
    total NLLs in nats (all of R, or the sample).
    """

    exposure: float
    method: str
    log2_space_size: float
    canary_nll: float
    rank: int | None = None
    fit: SkewNormal | None = None
    candidate_nlls: np.ndarray = field(default=None, repr=False)

    @property
    def n_scored(self) -> int:
        return 0 if self.candidate_nlls is None else int(len(self.candidate_nlls))

    def to_dict(self) -> dict:
        return {
            "exposure": self.exposure,
            "method": self.method,
            "rank": self.rank,
            "log2_space_size": self.log2_space_size,
            "canary_nll": self.canary_nll,
            "n_scored": self.n_scored,
        }


def exposure_from_rank(rank: int, space_size: int) -> float:
    """log2 |R| - log2 rank, for a 1-based rank among all |R| candidates."""
    if not 1 <= rank <= space_size:
        raise ValueError(f"rank must be in [1, {space_size}]; got {rank}.")
    return math.log2(space_size) - math.log2(rank)


def _slots(secret, candidates, text_mode: bool) -> tuple[list[list], list[int]]:
    """Per-slot alphabets (lists of strings or token IDs) and the index of the secret's value in each."""
    if text_mode:
        if isinstance(candidates, str):
            candidates = [candidates] * len(secret)
        slots = [list(a) for a in candidates]  # a string alphabet becomes its characters
        values = list(secret)  # a string secret is one character per slot; else a list of slot strings
    else:
        if len(candidates) and all(is_int(c) for c in candidates):
            candidates = [candidates] * len(secret)
        slots = [token_list(a, f"candidates[{i}]") for i, a in enumerate(candidates)]
        values = token_list(secret, "secret")
    if not values:
        raise ValueError("The secret is empty.")
    if len(slots) != len(values):
        raise ValueError(f"candidates gives {len(slots)} slot alphabets for a secret of {len(values)} slots.")
    index = []
    for i, (value, alphabet) in enumerate(zip(values, slots)):
        if len(alphabet) == 0:
            raise ValueError(f"Slot {i} of the randomness space is empty.")
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"Slot {i}'s alphabet has duplicates; each candidate must be counted once.")
        if value not in alphabet:
            raise ValueError(f"Slot {i} of the secret is not in that slot's alphabet, so the secret is not in R.")
        index.append(alphabet.index(value))
    return slots, index


def canary_exposure(
    model: nn.Module,
    tokenizer,
    prefix,
    secret,
    candidates,
    *,
    suffix=None,
    sequence_id: int | None = None,
    max_enumerate: int = 100_000,
    num_samples: int = 10_000,
    batch_size: int = 128,
    pad_token_id: int | None = 0,
    seed: int = 0,
    progress: bool = False,
) -> ExposureResult:
    """Exposure of the canary ``prefix + secret + suffix`` among all secrets of the space ``candidates``.

    Two ways to describe the canary:

    - ``tokenizer=None``: ``prefix``, ``secret`` and ``suffix`` are token-ID lists, and
      ``candidates`` is one alphabet of token IDs used for every secret slot, or a list of
      per-slot alphabets; a candidate is ``prefix + [one token per slot] + suffix``.
    - with a tokenizer: ``prefix``, ``secret``, ``suffix`` are strings and ``candidates`` is an
      alphabet string (``"0123456789"``: each character a value of each slot) or a list of
      per-slot alphabets (of characters or strings); each candidate text is tokenized whole,
      so merges across the secret's boundaries are what the model saw.

    The space R is the product of the slot alphabets. ``|R| <= max_enumerate``: every
    candidate is scored and the rank is exact. Otherwise ``num_samples`` candidates drawn
    uniformly from R (seeded by ``seed``) fit the skew-normal estimate.

    A model with sinks in ``own`` mode scores every candidate with the canary's ID
    (``sequence_id``, default ``memsinks.content_id`` of the canary's tokens): the sinks the
    canary trained, asked to tell the true secret from the others.
    """
    text_mode = tokenizer is not None
    suffix = ("" if text_mode else []) if suffix is None else suffix
    slots, secret_index = _slots(secret, candidates, text_mode)
    model = unwrap_model(model)

    if text_mode:
        if not all(isinstance(p, str) for p in (prefix, suffix)):
            raise TypeError("With a tokenizer, prefix and suffix are strings; pass tokenizer=None for token IDs.")

        def encode(choice: Sequence[int]) -> list[int]:
            return list(tokenizer(prefix + "".join(slots[i][c] for i, c in enumerate(choice)) + suffix)["input_ids"])
    else:
        prefix, suffix = token_list(prefix, "prefix"), token_list(suffix, "suffix")
        if not prefix:
            raise ValueError("The canary needs a non-empty prefix: the first token of a sequence is not scored.")

        def encode(choice: Sequence[int]) -> list[int]:
            return prefix + [slots[i][c] for i, c in enumerate(choice)] + suffix

    canary_tokens = encode(secret_index)
    if len(canary_tokens) < 2:
        raise ValueError("The canary encodes to fewer than 2 tokens; there is nothing to score.")
    if sequence_id is None and sinks_mode_in_force(model) == "own":
        sequence_id = content_id(canary_tokens)
    elif sequence_id is not None:
        sequence_id = checked_sequence_id(sequence_id, "sequence_id")

    def score(choices: list[Sequence[int]]) -> np.ndarray:
        seqs = [encode(c) for c in choices]
        ids = None if sequence_id is None else [sequence_id] * len(seqs)
        nlls = token_nlls(model, seqs, ids, batch_size=batch_size, pad_token_id=pad_token_id, progress=progress)
        totals = np.array([x.sum() for x in nlls], dtype=np.float64)
        check_finite({"candidate_nll": totals}, "canary exposure")
        return totals

    sizes = [len(a) for a in slots]
    log2_size = float(sum(math.log2(s) for s in sizes))
    space_size = math.prod(sizes)
    if space_size <= max_enumerate:
        choices = list(itertools.product(*[range(s) for s in sizes]))
        nlls = score(choices)
        flat_index = int(np.ravel_multi_index(tuple(secret_index), sizes))
        canary_nll = float(nlls[flat_index])
        rank = 1 + int(np.sum(nlls < canary_nll))
        return ExposureResult(
            exposure=exposure_from_rank(rank, space_size), method="enumeration", log2_space_size=log2_size,
            canary_nll=canary_nll, rank=rank, candidate_nlls=nlls,
        )
    if num_samples < 3:
        raise ValueError(f"|R| = 2^{log2_size:.1f} is too large to enumerate; the estimate needs num_samples >= 3.")
    rng = np.random.default_rng(seed)
    sampled = np.stack([rng.integers(0, s, size=num_samples) for s in sizes], axis=1)
    nlls = score([tuple(row) for row in sampled.tolist()])
    canary_nll = float(score([tuple(secret_index)])[0])
    fit = SkewNormal.fit(nlls)
    exposure = -fit.logcdf(canary_nll) / math.log(2)
    return ExposureResult(
        exposure=float(min(max(exposure, 0.0), log2_size)), method="skew_normal", log2_space_size=log2_size,
        canary_nll=canary_nll, fit=fit, candidate_nlls=nlls,
    )
