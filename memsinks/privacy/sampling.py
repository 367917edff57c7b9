"""Poisson sampling of privacy units, and the data loader that hands the Trainer whole sampled batches.

The accountants (PRV, RDP) bound the privacy loss of the *Poisson-subsampled* Gaussian
mechanism: at every step each unit joins the batch independently with probability ``q``,
so the batch size is random (Binomial(N, q) units). A loader that shuffles and cuts
fixed-size batches samples without replacement, and that is not what those bounds assume
(microsoft/dp-transformers' mismatch). ``UnitPoissonSampler`` draws the real thing:
per example, or per sequence ID (user-level), in which case a sampled ID brings all of its
rows.

A sampled (logical) batch can be larger than memory allows: ``PhysicalBatches`` cuts it
into pieces of at most ``physical_batch_size`` rows, never splitting a unit, and collates
each piece with the user's collator. The Trainer sees one item per optimizer step, a dict
``{"physical_batches": [...], "num_units": U, "num_rows": R}``; the private training step
runs the pieces and sums their clipped gradients before the single noisy step.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from memsinks.privacy.randomness import PrivacyRandomness

PHYSICAL_BATCHES = "physical_batches"


class PrivacyUnits:
    """The training rows grouped into privacy units.

    Args:
        unit_of_row: (N_rows,) ints: the unit of each row, in [0, N_units).
    Attributes:
        order: rows sorted by unit; ``order[offsets[u]:offsets[u + 1]]`` are unit u's rows.
        sizes: (N_units,) rows per unit.
    """

    def __init__(self, unit_of_row: np.ndarray):
        unit_of_row = np.asarray(unit_of_row, dtype=np.int64)
        self.unit_of_row = unit_of_row
        self.num_rows = int(unit_of_row.size)
        self.num_units = int(unit_of_row.max()) + 1 if unit_of_row.size else 0
        self.sizes = np.bincount(unit_of_row, minlength=self.num_units)
        self.order = np.argsort(unit_of_row, kind="stable")
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])

    @classmethod
    def per_example(cls, num_rows: int) -> "PrivacyUnits":
        return cls(np.arange(num_rows))

    @classmethod
    def from_ids(cls, ids: Sequence[int] | np.ndarray) -> "PrivacyUnits":
        """Rows sharing an ID form one unit (user-level)."""
        _, inverse = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
        return cls(inverse.reshape(-1))

    def rows_of(self, units: np.ndarray) -> np.ndarray:
        """The rows of the given units, unit after unit."""
        if units.size == 0:
            return np.zeros(0, dtype=np.int64)
        starts, sizes = self.offsets[units], self.sizes[units]
        within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return self.order[np.repeat(starts, sizes) + within]


class UnitPoissonSampler(torch.utils.data.Sampler):
    """A batch sampler: each step, every unit is included independently with probability ``sample_rate``.

    Yields lists of row indices (all rows of each included unit, unit after unit; possibly
    empty). ``len`` is the number of steps per epoch. A step's draw is exact: the number of
    units K ~ Binomial(N, q) in float64 (numpy), then K distinct units uniformly, which is the
    same distribution as N independent coin flips, at a cost that grows with K, not N
    (``torch.rand(N) < q`` in float32 inflates rates below about 1e-6). Each step's generator
    is seeded from ``randomness`` with the epoch and step, so that under several processes
    every rank draws the same units and takes its share (``rank::world_size`` of them).
    """

    def __init__(self, units: PrivacyUnits, sample_rate: float, steps_per_epoch: int, randomness: PrivacyRandomness,
                 rank: int = 0, world_size: int = 1):
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1]; got {sample_rate}.")
        self.units = units
        self.sample_rate = float(sample_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.randomness = randomness
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def draw(self, step: int) -> np.ndarray:
        """The units sampled at ``step`` of the current epoch (all ranks), sorted."""
        rng = self.randomness.numpy_generator("poisson", self.epoch, step)
        n = self.units.num_units
        k = int(rng.binomial(n, self.sample_rate))
        return np.sort(rng.choice(n, size=k, replace=False)) if k else np.zeros(0, dtype=np.int64)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.steps_per_epoch):
            mine = self.draw(step)[self.rank::self.world_size]
            yield self.units.rows_of(mine).tolist()


class _WithIndex(Dataset):
    """Yields ``(row_index, example)`` so the collate step knows each example's unit."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return i, self.dataset[i]

    def __getitems__(self, indices: list[int]):
        if hasattr(self.dataset, "__getitems__"):
            return list(zip(indices, self.dataset.__getitems__(indices)))
        return [(i, self.dataset[i]) for i in indices]


class PhysicalBatches:
    """Collate function: a logical batch of ``(row, example)`` pairs -> its physical batches.

    Pieces hold at most ``physical_batch_size`` rows and whole units (a unit is never split:
    its gradient must be complete before it is clipped).
    """

    def __init__(self, collator: Callable[[list], dict], units: PrivacyUnits, physical_batch_size: int):
        self.collator = collator
        self.units = units
        self.physical_batch_size = int(physical_batch_size)

    def __call__(self, pairs: list[tuple[int, Any]]) -> dict[str, Any]:
        pieces: list[list] = []
        current: list = []
        current_unit = -1
        unit_rows: list = []
        num_units = 0
        for row, example in pairs:
            unit = int(self.units.unit_of_row[row])
            if unit != current_unit:
                if unit_rows:
                    current, pieces = self._place(unit_rows, current, pieces)
                unit_rows, current_unit = [], unit
                num_units += 1
            unit_rows.append(example)
        if unit_rows:
            current, pieces = self._place(unit_rows, current, pieces)
        if current:
            pieces.append(current)
        return {PHYSICAL_BATCHES: [self.collator(p) for p in pieces], "num_units": num_units, "num_rows": len(pairs)}

    def _place(self, unit_rows: list, current: list, pieces: list) -> tuple[list, list]:
        if current and len(current) + len(unit_rows) > self.physical_batch_size:
            pieces.append(current)
            current = []
        return current + unit_rows, pieces


class PrivateDataLoader(DataLoader):
    """The training loader under DP: one Poisson-sampled logical batch per optimizer step (this rank's share)."""

    def __init__(self, dataset, collator: Callable, units: PrivacyUnits, sample_rate: float, steps_per_epoch: int,
                 physical_batch_size: int, randomness: PrivacyRandomness, rank: int = 0, world_size: int = 1,
                 **kwargs):
        sampler = UnitPoissonSampler(units, sample_rate, steps_per_epoch, randomness, rank, world_size)
        super().__init__(_WithIndex(dataset), batch_sampler=sampler,
                         collate_fn=PhysicalBatches(collator, units, physical_batch_size), **kwargs)

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)
