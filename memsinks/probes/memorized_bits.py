"""Memorized bits (Morris et al. 2025, "How much do language models memorize?").

The information a model holds about a sequence x beyond what a reference model already
predicts: the code length of x under the reference minus its code length under the model
(coding with whichever of the two is better, so never negative),

    bits(x) = max(0, log2 p_model(x) - log2 p_ref(x)),

summed over sequences. Without a reference model the reference is the uniform distribution
over the vocabulary, under which x costs (len(x) - 1) * log2 |V| bits, the most a sequence
can contribute. The first token is context in both terms and is not coded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from torch import nn

from memsinks.probes._common import (
    as_token_lists, check_finite, check_min_length, check_same_vocabulary, resolve_sequence_ids,
)
from memsinks.probes.likelihood import token_nlls
from memsinks.unwrap import unwrap_model


@dataclass
class MemorizedBitsResult:
    """Total and mean memorized bits; ``per_example`` has float64 arrays ``bits``, ``model_bits``
    and ``reference_bits`` (code lengths in bits). ``reference`` is ``"model"`` or ``"uniform"``."""

    total_bits: float
    mean_bits: float
    reference: str
    n_parameters: int
    per_example: dict = field(repr=False)

    @classmethod
    def from_per_example(cls, per_example: dict, reference: str, n_parameters: int) -> "MemorizedBitsResult":
        bits = np.asarray(per_example["bits"])
        if bits.size == 0:
            raise ValueError("No sequences to aggregate memorized bits over.")
        return cls(total_bits=float(bits.sum()), mean_bits=float(bits.mean()), reference=reference,
                   n_parameters=int(n_parameters), per_example=per_example)

    @property
    def bits_per_parameter(self) -> float:
        return self.total_bits / self.n_parameters if self.n_parameters else 0.0

    def to_dict(self) -> dict:
        return {
            "total_bits": self.total_bits,
            "mean_bits": self.mean_bits,
            "bits_per_parameter": self.bits_per_parameter,
            "reference": self.reference,
            "n_sequences": int(len(self.per_example["bits"])),
            "n_parameters": self.n_parameters,
        }


def _vocab_size(model: nn.Module) -> int:
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None:
        return int(emb.weight.shape[0])
    return int(model.config.vocab_size)


def memorized_bits(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    reference_model: nn.Module | None = None,
    sequence_ids: Sequence[int] | None = None,
    batch_size: int = 32,
    *,
    pad_token_id: int | None = 0,
    progress: bool = False,
) -> MemorizedBitsResult:
    """Memorized bits of each sequence (see the module docstring) and their sum.

    Args:
        sequences: token-ID lists of at least 2 tokens.
        reference_model: a model with the same tokenizer that did not see the sequences;
            None uses the uniform distribution over the model's vocabulary.
        sequence_ids: IDs for a model with sinks in ``own`` mode (default: content IDs).
    """
    sequences = as_token_lists(sequences, "sequences")
    check_min_length(sequences, 2, "sequences", "A sequence's first token is context; give at least 2 tokens.")
    model = unwrap_model(model)
    ids = resolve_sequence_ids(model, sequences, sequence_ids)
    nlls = token_nlls(model, sequences, ids, batch_size=batch_size, pad_token_id=pad_token_id, progress=progress)
    model_bits = np.array([x.sum() for x in nlls]) / math.log(2)
    if reference_model is None:
        reference = "uniform"
        reference_bits = np.array([(len(s) - 1) * math.log2(_vocab_size(model)) for s in sequences])
    else:
        reference = "model"
        reference_model = unwrap_model(reference_model)
        check_same_vocabulary(model, reference_model)
        ref_ids = resolve_sequence_ids(reference_model, sequences, sequence_ids)
        ref = token_nlls(reference_model, sequences, ref_ids, batch_size=batch_size, pad_token_id=pad_token_id,
                         progress=progress)
        reference_bits = np.array([x.sum() for x in ref]) / math.log(2)
    bits = np.clip(reference_bits - model_bits, 0.0, reference_bits)
    per_example = {"bits": bits, "model_bits": model_bits, "reference_bits": reference_bits}
    check_finite(per_example, "memorized bits")
    n_parameters = sum(p.numel() for p in model.parameters())
    return MemorizedBitsResult.from_per_example(per_example, reference, n_parameters)
