"""``CanaryCallback``: exposure of planted canaries (``memsinks.probes.canary_exposure``) during training."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from memsinks.callbacks.base import METRIC_PREFIX, MemorizationCallback
from memsinks.callbacks.distributed import gather_probe_results, shard_indices
from memsinks.model import has_sinks, sinks_mode
from memsinks.probes._common import check_token_range, vocabulary_size
from memsinks.probes.exposure import Canary, canary_exposure


class CanaryCallback(MemorizationCallback):
    """Logs ``memorization/canary_exposure_mean`` and ``memorization/canary_exposure_max`` (bits) over
    the given canaries, and ``memorization/canary_log2_space`` (log2 |R|, the most exposure can be).

    Args:
        tokenizer: tokenizes each candidate canary text (as training tokenized the canaries).
        canaries: ``memsinks.probes.Canary`` objects, or canary texts whose secret is the last
            match of ``pattern`` drawn from ``alphabet`` (default: the last run of digits).
        max_enumerate, num_samples: exact ranks up to |R| = ``max_enumerate``, else the
            skew-normal estimate from ``num_samples`` sampled candidates.
        sinks_mode: the mode to measure in on a model with sinks; None uses the configured
            eval mode (``drop``: the exposure of the model you ship).

    Canaries are split across ranks under ``torch.distributed``; every rank logs the same numbers.
    """

    METRICS = tuple(METRIC_PREFIX + name for name in ("canary_exposure_mean", "canary_exposure_max",
                                                      "canary_log2_space"))

    def __init__(
        self,
        tokenizer,
        canaries: Sequence[Canary | str],
        every_n_steps: int | None = 200,
        *,
        alphabet: str = "0123456789",
        pattern: str = r"\d+",
        max_enumerate: int = 100_000,
        num_samples: int = 2_000,
        batch_size: int = 128,
        sinks_mode: str | None = None,
        on_evaluate: bool = True,
        at_train_end: bool = True,
        seed: int = 0,
    ):
        super().__init__(every_n_steps, on_evaluate, at_train_end)
        if tokenizer is None:
            raise ValueError("CanaryCallback needs the tokenizer to encode the candidate canaries.")
        if isinstance(canaries, (str, Canary)) or not canaries:
            raise ValueError("canaries must be a non-empty list of Canary objects or canary texts.")
        self.canaries = [c if isinstance(c, Canary) else Canary.from_text(c, pattern, alphabet) for c in canaries]
        self.tokenizer = tokenizer
        self.max_enumerate, self.num_samples = max_enumerate, num_samples
        self.batch_size = batch_size
        self.sinks_mode = sinks_mode
        self.seed = seed

    def check_model(self, model: torch.nn.Module) -> None:
        if self.sinks_mode is not None and not has_sinks(model):
            raise ValueError(f"CanaryCallback(sinks_mode={self.sinks_mode!r}) needs a model with sinks.")
        tokens = [list(self.tokenizer(c.text)["input_ids"]) for c in self.canaries]
        check_token_range(tokens, vocabulary_size(model), lambda i: f"canary {i}")

    def _local(self, model: torch.nn.Module) -> dict[str, np.ndarray]:
        """Exposure (bits) and log2 |R| of this rank's share of the canaries."""
        exposures, spaces = [], []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with sinks_mode(model, self.sinks_mode):
            for i in shard_indices(len(self.canaries)).tolist():
                c = self.canaries[i]
                result = canary_exposure(
                    model, self.tokenizer, c.prefix, c.secret, c.alphabet, suffix=c.suffix,
                    max_enumerate=self.max_enumerate, num_samples=self.num_samples, batch_size=self.batch_size,
                    pad_token_id=pad, seed=self.seed + i,
                )
                exposures.append(result.exposure)
                spaces.append(result.log2_space_size)
        return {"exposure": np.array(exposures, dtype=np.float64), "log2_space": np.array(spaces, dtype=np.float64)}

    def compute(self, model: torch.nn.Module, state) -> dict:
        gathered = gather_probe_results(lambda: self._local(model))
        return {
            METRIC_PREFIX + "canary_exposure_mean": float(np.mean(gathered["exposure"])),
            METRIC_PREFIX + "canary_exposure_max": float(np.max(gathered["exposure"])),
            METRIC_PREFIX + "canary_log2_space": float(np.max(gathered["log2_space"])),
        }
