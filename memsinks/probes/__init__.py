"""Memorization probes: measurements that take a model and token sequences and return numbers.

Each probe works on any causal LM (with or without sinks, in whatever sinks mode is in force)
and returns a result with aggregate numbers, per-example arrays and ``to_dict()``:

- ``extraction``: prompt with a training prefix, compare the greedy continuation (Carlini et al. 2023).
- ``dsp_extraction``: the same after a learned prefix-dependent soft prompt (Wang et al. 2024), with baselines.
- ``membership_inference``: LOSS, zlib, Min-K% and reference-model scores; ROC AUC, TPR at low FPR.
- ``canary_exposure``: rank of a planted secret among its randomness space (Carlini et al. 2019).
- ``memorized_bits``: bits a model holds about sequences beyond a reference (Morris et al. 2025).
- ``sink_gap``: the share of a memorized set's loss gap that dropping the sinks closes.
"""

from memsinks.probes.dsp import DSPConfig, DSPResult, dsp_extraction
from memsinks.probes.exposure import Canary, ExposureResult, canary_exposure, exposure_from_rank
from memsinks.probes.extraction import ExtractionResult, extraction
from memsinks.probes.generation import generate_continuations
from memsinks.probes.inputs import ProbeSet
from memsinks.probes.likelihood import sequence_losses, token_nlls
from memsinks.probes.membership import MembershipResult, membership_inference, membership_scores
from memsinks.probes.memorized_bits import MemorizedBitsResult, memorized_bits
from memsinks.probes.roc import roc_auc, tpr_at_fpr
from memsinks.probes.sink_gap import SinkGapResult, sink_gap
from memsinks.probes.soft_prompts import PromptGenerator

__all__ = [
    "sequence_losses",
    "token_nlls",
    "generate_continuations",
    "extraction",
    "ExtractionResult",
    "dsp_extraction",
    "DSPConfig",
    "DSPResult",
    "PromptGenerator",
    "membership_inference",
    "membership_scores",
    "MembershipResult",
    "roc_auc",
    "tpr_at_fpr",
    "canary_exposure",
    "exposure_from_rank",
    "Canary",
    "ExposureResult",
    "memorized_bits",
    "MemorizedBitsResult",
    "sink_gap",
    "SinkGapResult",
    "ProbeSet",
]
