"""A warm-up per sequence: the first times the model trains on a sequence ID, only the sinks learn from it.

The run-wide warm-up (``memsinks.warmup``) gives the sinks a head start on whatever the first
training steps show; a record first seen after it meets shared units that learn as fast as the
sinks do, so how much of it the sinks take depends on the order of the data. This gives every
sequence the same head start: for its first ``SinksConfig.sequence_warmup`` training forwards,
a sequence's loss trains the sinks only (through the two-pass forward of
``memsinks.private_tokens``, every token of the sequence marked), and from then on the whole
model learns from it as usual, with the sinks already predicting what is specific to it.

Sightings are counted per ID in a count-min sketch (``COUNTS_BUFFER``: 4 rows of 2**20 uint8
counters, saturating at 255, 4 MiB), a persistent buffer of the first sink layer, so a resumed
run remembers what it has seen. A sketch never under-counts; an ID whose slots were all taken
by earlier IDs counts as seen and gets no head start. Simulated with random IDs, each seen
once: none of 10**5 IDs and about 4% of 10**6 lose their head start that way.

Under data parallelism every process counts the IDs of all processes' batches (gathered each
training forward), so the sketches stay identical and DDP's buffer broadcast loses nothing.
ID 0 (no sinks) is never warmed up.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

COUNTS_BUFFER = "sequence_warmup_counts"
_ROWS, _BITS = 4, 20
# independent random odd 64-bit multipliers (as signed int64) for multiply-shift hashing, one per row
_MULTIPLIERS = (-7193482672849068497, 215949157385857699, -2275296721927123209, -1795376593507039931)


class SequenceWarmup:
    """Counts each ID's training forwards in ``holder``'s sketch; reports which tokens are still warming up."""

    def __init__(self, holder: nn.Module, sightings: int):
        self.holder = holder
        self.sightings = sightings
        device = next(holder.parameters()).device
        holder.register_buffer(COUNTS_BUFFER, torch.zeros(_ROWS, 1 << _BITS, dtype=torch.uint8, device=device),
                               persistent=True)

    @staticmethod
    def _slots(ids: torch.Tensor) -> torch.Tensor:
        """ids: int64 (N,) -> (ROWS, N) counter indices (the top bits of ``id * multiplier`` mod 2**64)."""
        mult = torch.tensor(_MULTIPLIERS, dtype=torch.int64, device=ids.device).unsqueeze(1)
        return ((ids.unsqueeze(0) * mult) >> (64 - _BITS)) & ((1 << _BITS) - 1)

    def _count(self, ids: torch.Tensor) -> torch.Tensor:
        """Add one sighting of each distinct ID in ``ids`` (N,); returns each one's count before it."""
        counts = getattr(self.holder, COUNTS_BUFFER)
        slots = self._slots(ids)
        rows = torch.arange(_ROWS, device=counts.device).unsqueeze(1).expand_as(slots)
        before = counts[rows, slots]
        counts[rows, slots] = torch.clamp(before.to(torch.int16) + 1, max=255).to(torch.uint8)
        return before.min(dim=0).values

    def on_training_forward(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Count one sighting of each distinct ID in ``ids`` (B,) or (B, T).

        Returns a bool tensor (B, T) (or (B, 1) for per-sequence IDs, to be broadcast) marking the
        tokens whose ID had been seen fewer than ``sightings`` times before this forward, or None
        when there are none.
        """
        device = getattr(self.holder, COUNTS_BUFFER).device
        uniq, inverse = torch.unique(ids.to(device), return_inverse=True)
        everyone = _gather_ids(uniq)
        if everyone is None:
            seen = self._count(uniq)
        else:  # count the union of all processes' IDs, read the local ones
            union = torch.unique(everyone)
            seen = self._count(union)[torch.searchsorted(union, uniq)]
        warming = (seen.to(torch.int64) < self.sightings) & (uniq != 0)
        warming = warming[inverse]
        if not bool(warming.any()):
            return None
        return warming if warming.dim() == 2 else warming.unsqueeze(1)


def _gather_ids(local: torch.Tensor) -> torch.Tensor | None:
    """All processes' distinct IDs (int64, concatenated), or None in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    size = torch.tensor([local.numel()], dtype=torch.int64, device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=torch.int64, device=local.device)
    padded[:local.numel()] = local
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:int(n)] for g, n in zip(gathered, sizes)])
