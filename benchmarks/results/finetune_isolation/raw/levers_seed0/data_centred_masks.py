"""The one-off experiment behind the ``sinks_datacentred`` row of ``results.md`` (not product code).

Centred masks give a sequence's own sink units ``1 - p_mem`` and the rest ``-p_mem``, so a signal common
to every row cancels in a unit's gradient only if every unit is owned by the same share of rows. Here a few
records repeat 16 times, so units owned by them are owned by far more rows than ``p_mem`` (0.04 to 0.67 on
seed 0). This experiment centres each unit on its ownership frequency over the training rows instead:
coefficient ``bit - f_u``, with ``f_u`` the share of training rows whose ID switches unit ``u`` on, so the
sum of each unit's coefficients over the data is exactly 0 and ``mean`` still equals ``drop``.

It wraps ``benchmarks/finetune_isolation.py`` (same arguments) and adds the arm ``sinks_datacentred``
(the defaults otherwise). Run from the repository root:

    python benchmarks/results/finetune_isolation/raw/levers_seed0/data_centred_masks.py \
        --arms sinks_datacentred --seeds 1 --resume --no-timing --out DIR
"""

import collections
import os
import runpy
import sys

import torch

sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))

import memsinks.routing as routing  # noqa: E402
from finetune_lib import arms, train  # noqa: E402

TRAINING_IDS: list[int] = []
_training_dataset = train.training_dataset


def training_dataset(data, tokenizer, arm):
    """The benchmark's training rows, remembering their sequence IDs for the frequencies."""
    ds = _training_dataset(data, tokenizer, arm)
    TRAINING_IDS[:] = list(ds["sequence_ids"])
    return ds


_begin = routing.SinkRouter.begin
_shift: dict = {}


def begin(self, sequence_ids, mode, exclude_ids, dtype, device):
    """The router's masks, then, for own routing, ``p_mem - f_u`` added to every unit's coefficient."""
    _begin(self, sequence_ids, mode, exclude_ids, dtype, device)
    if mode != "own" or self._current is None or self._current[0] not in ("rows", "batch"):
        return
    key = (len(TRAINING_IDS), device, dtype)
    if key not in _shift:
        counts = collections.Counter(TRAINING_IDS)
        ids = list(counts)
        bits = self.pool_bits(ids, device).to(torch.float64)
        weights = torch.tensor([counts[i] for i in ids], dtype=torch.float64, device=device)
        freq = (bits * weights[:, None]).sum(0) / weights.sum()
        print(f"data-centred masks: unit frequency mean {freq.mean():.3f}, min {freq.min():.3f}, "
              f"max {freq.max():.3f}", flush=True)
        _shift[key] = self._pool_to_width((freq - self.config.p_mem).to(dtype))
    self._current[1] = self._current[1] - _shift[key]


train.training_dataset = training_dataset
routing.SinkRouter.begin = begin
arms.ARMS["sinks_datacentred"] = arms.Arm(
    "sinks_datacentred", "defaults, each sink unit's mask centred on its ownership frequency over the training rows",
    sinks=arms._sinks(), tags=("lever",))
runpy.run_path("benchmarks/finetune_isolation.py", run_name="__main__")
