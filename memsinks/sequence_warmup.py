"""A warm-up per sequence: the first times the model trains on a sequence ID, only the sinks learn from it.

The run-wide warm-up (``memsinks.warmup``) gives the sinks a head start on whatever the first
training steps show; a record first seen after it meets shared units that learn as fast as the
sinks do, so how much of it the sinks take depends on the order of the data. This gives every
sequence the same head start: for its first ``SinksConfig.sequence_warmup`` training forwards,
a sequence's loss trains the sinks only (through the two-pass forward of
``memsinks.private_tokens``, every token of the sequence marked), and from then on the whole
model learns from it as usual, with the sinks already predicting what is specific to it.

Sightings are counted per ID in a count-min sketch (``COUNTS_BUFFER``: 4 rows of 2**16 uint8
counters, saturating at 255), a persistent buffer of the first sink layer, so a resumed run
remembers what it has seen. A sketch never under-counts: two IDs that collide in all four rows
share a count, which can only end one's warm-up early (for 10**5 distinct IDs, a chance of
about 1e-9 per ID).
"""

from __future__ import annotations

import torch
from torch import nn

COUNTS_BUFFER = "sequence_warmup_counts"
_ROWS, _BITS = 4, 16
# odd 64-bit multipliers (as signed int64) for multiply-shift hashing, one per sketch row
_MULTIPLIERS = (-7046029254386353131, -4658895280553007687, 7046029254386353133, 5279150307018497417)


class SequenceWarmup:
    """Counts each ID's training forwards in ``holder``'s sketch; reports which tokens are still warming up."""

    def __init__(self, holder: nn.Module, sightings: int):
        self.holder = holder
        self.sightings = sightings
        holder.register_buffer(COUNTS_BUFFER, torch.zeros(_ROWS, 1 << _BITS, dtype=torch.uint8), persistent=True)

    def _slots(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: int64 (N,) -> (ROWS, N) counter indices."""
        mult = torch.tensor(_MULTIPLIERS, dtype=torch.int64, device=ids.device).unsqueeze(1)
        return ((ids.unsqueeze(0) * mult) >> (64 - _BITS)) & ((1 << _BITS) - 1)

    def on_training_forward(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Count one sighting of each distinct ID in ``ids`` (B,) or (B, T).

        Returns a bool tensor (B, T) (or (B, 1) for per-sequence IDs, to be broadcast) marking the
        tokens whose ID had been seen fewer than ``sightings`` times before this forward, or None
        when there are none.
        """
        counts = getattr(self.holder, COUNTS_BUFFER)
        uniq, inverse = torch.unique(ids.to(counts.device), return_inverse=True)
        slots = self._slots(uniq)
        rows = torch.arange(_ROWS, device=counts.device).unsqueeze(1).expand_as(slots)
        seen = counts[rows, slots].min(dim=0).values
        counts[rows, slots] = torch.clamp(counts[rows, slots].to(torch.int16) + 1, max=255).to(torch.uint8)
        warming = (seen.to(torch.int64) < self.sightings)[inverse]
        if not bool(warming.any()):
            return None
        return warming if warming.dim() == 2 else warming.unsqueeze(1)
