"""Extraction (discoverable memorization, Carlini et al. 2023): prompt with a training prefix, compare the continuation.

For each sequence the first ``prefix_len`` tokens prompt the model, which decodes
``suffix_len`` tokens; these are compared with the true next ``suffix_len`` tokens. Pythia's
memorization evaluations use 32 + 32 (Biderman et al. 2023), the default here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from torch import nn

from memsinks.probes._common import (
    as_token_lists, check_fits_context, check_min_length, check_token_range, resolve_sequence_ids,
    vocabulary_size,
)
from memsinks.probes.generation import generate_continuations
from memsinks.unwrap import unwrap_model


def exact_match(generated: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Whether every position matches: bool (N,) from int arrays (N, S)."""
    return np.all(np.asarray(generated) == np.asarray(target), axis=-1)


def token_accuracy(generated: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Share of positions where the tokens match: float (N,) from int arrays (N, S)."""
    return np.mean(np.asarray(generated) == np.asarray(target), axis=-1)


def longest_common_ngram(generated: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Length of the longest run of tokens that occurs contiguously in both rows: int (N,) from (N, S).

    Unlike ``token_accuracy`` it credits a memorized span reproduced at a shifted position.
    Dynamic programme over (i, j), vectorised across rows.
    """
    a, b = np.asarray(generated), np.asarray(target)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"longest_common_ngram takes two (N, S) arrays; got {a.shape} and {b.shape}.")
    n, la, lb = a.shape[0], a.shape[1], b.shape[1]
    best = np.zeros(n, dtype=np.int64)
    prev = np.zeros((n, lb + 1), dtype=np.int64)
    for i in range(la):
        cur = np.zeros((n, lb + 1), dtype=np.int64)
        same = a[:, i:i + 1] == b  # (N, lb)
        cur[:, 1:] = np.where(same, prev[:, :-1] + 1, 0)
        best = np.maximum(best, cur.max(axis=1))
        prev = cur
    return best


@dataclass
class ExtractionResult:
    """Extraction rates over a set of sequences.

    ``exact_match``: share of sequences whose whole suffix was reproduced; ``token_accuracy``:
    mean share of suffix positions reproduced; ``ngram_share``: mean longest common token n-gram
    as a share of the suffix length. ``per_example`` holds arrays of length N: ``exact_match``
    (bool), ``token_accuracy``, ``ngram_share`` (float) and ``generated`` (int, (N, S): the greedy
    continuation, or the best sample). Generated tokens never appear in ``to_dict``.
    """

    exact_match: float
    token_accuracy: float
    ngram_share: float
    per_example: dict = field(repr=False)
    prefix_len: int = 32
    suffix_len: int = 32
    num_samples: int = 0

    @classmethod
    def from_per_example(cls, per_example: dict, prefix_len: int, suffix_len: int, num_samples: int = 0):
        """Aggregate per-example arrays (for instance gathered from several ranks)."""
        n = len(per_example["exact_match"])
        if n == 0:
            raise ValueError("No sequences to aggregate extraction over.")
        return cls(
            exact_match=float(np.mean(per_example["exact_match"])),
            token_accuracy=float(np.mean(per_example["token_accuracy"])),
            ngram_share=float(np.mean(per_example["ngram_share"])),
            per_example=per_example, prefix_len=prefix_len, suffix_len=suffix_len, num_samples=num_samples,
        )

    @property
    def n_sequences(self) -> int:
        return int(len(self.per_example["exact_match"]))

    @property
    def n_extracted(self) -> int:
        return int(np.sum(self.per_example["exact_match"]))

    def to_dict(self) -> dict:
        return {
            "exact_match": self.exact_match,
            "token_accuracy": self.token_accuracy,
            "ngram_share": self.ngram_share,
            "n_sequences": self.n_sequences,
            "n_extracted": self.n_extracted,
            "prefix_len": self.prefix_len,
            "suffix_len": self.suffix_len,
            "num_samples": self.num_samples,
        }


def extraction(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    prefix_len: int = 32,
    suffix_len: int = 32,
    sequence_ids: Sequence[int] | None = None,
    batch_size: int = 32,
    pad_token_id: int | None = None,
    num_samples: int = 0,
    top_k: int = 40,
    *,
    seed: int = 0,
    progress: bool = False,
) -> ExtractionResult:
    """Prompt with the first ``prefix_len`` tokens of each sequence and compare ``suffix_len`` decoded tokens.

    Greedy decoding by default (batched, left padding, KV cache). With ``num_samples > 0``,
    that many top-``top_k`` samples per prefix; a sequence counts as extracted if any sample
    reproduces the suffix, and its accuracy and n-gram share are those of its best sample.

    Args:
        sequences: token-ID lists, each at least ``prefix_len + suffix_len`` long; tokens past
            that are ignored.
        sequence_ids: for a model with sinks in ``own`` mode, one ID per sequence (default:
            ``memsinks.content_id`` of the full sequence, the ID training gave it).
    """
    if prefix_len < 1 or suffix_len < 1:
        raise ValueError(f"prefix_len and suffix_len must be >= 1; got {prefix_len} and {suffix_len}.")
    sequences = as_token_lists(sequences, "sequences")
    check_min_length(
        sequences, prefix_len + suffix_len, "sequences",
        f"Extraction prompts with {prefix_len} tokens and compares the next {suffix_len}; drop the short sequences "
        "or lower prefix_len / suffix_len.",
    )
    model = unwrap_model(model)
    check_fits_context(model, prefix_len, suffix_len)
    check_token_range(sequences, vocabulary_size(model), lambda i: f"sequence {i}")
    ids = resolve_sequence_ids(model, sequences, sequence_ids)
    prefixes = [s[:prefix_len] for s in sequences]
    target = np.array([s[prefix_len:prefix_len + suffix_len] for s in sequences], dtype=np.int64)
    out = generate_continuations(
        model, prefixes, suffix_len, sequence_ids=ids, batch_size=batch_size, pad_token_id=pad_token_id,
        num_samples=num_samples, top_k=top_k, seed=seed, progress=progress,
    )
    if num_samples > 0:
        n, k, s = out.shape
        flat_target = np.repeat(target, k, axis=0)
        flat = out.reshape(n * k, s)
        exact = exact_match(flat, flat_target).reshape(n, k)
        acc = token_accuracy(flat, flat_target).reshape(n, k)
        ngram = (longest_common_ngram(flat, flat_target) / suffix_len).reshape(n, k)
        best = np.argmax(acc + exact, axis=1)
        rows = np.arange(n)
        per_example = {
            "exact_match": exact.any(axis=1),
            "token_accuracy": acc.max(axis=1),
            "ngram_share": ngram.max(axis=1),
            "generated": out[rows, best],
        }
    else:
        per_example = {
            "exact_match": exact_match(out, target),
            "token_accuracy": token_accuracy(out, target),
            "ngram_share": longest_common_ngram(out, target) / suffix_len,
            "generated": out,
        }
    return ExtractionResult.from_per_example(per_example, prefix_len, suffix_len, num_samples)
