"""Poisson sampling of privacy units and the cutting of sampled batches into physical batches."""

import numpy as np
import pytest
import torch

from memsinks.privacy.randomness import PrivacyRandomness
from memsinks.privacy.sampling import PHYSICAL_BATCHES, PhysicalBatches, PrivacyUnits, UnitPoissonSampler


def _sizes(sampler, steps):
    out_rows, out_units = [], []
    sampler.steps_per_epoch = steps
    for batch in sampler:
        out_rows.append(len(batch))
        out_units.append(len({int(sampler.units.unit_of_row[r]) for r in batch}))
        assert len(set(batch)) == len(batch)  # without replacement within a step
    return np.array(out_rows), np.array(out_units)


def _assert_moments(values, mean, var, steps):
    # the sample mean is within 5 standard errors; the sample variance within 5 of its own
    assert abs(values.mean() - mean) < 5 * np.sqrt(var / steps)
    assert abs(values.var(ddof=1) - var) < 5 * var * np.sqrt(2 / (steps - 1)) + 1e-9


def test_example_level_batch_size_is_binomial():
    n, q, steps = 1000, 0.03, 4000
    rows, _ = _sizes(UnitPoissonSampler(PrivacyUnits.per_example(n), q, 1, _seeded(3)), steps)
    _assert_moments(rows, n * q, n * q * (1 - q), steps)


def test_user_level_samples_whole_users():
    # 300 users with 1..5 rows each: the number of users per step is Binomial(300, q) and
    # the number of rows has mean q * rows and variance q (1 - q) sum(size^2)
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 6, size=300)
    owner = np.repeat(np.arange(300), sizes)
    rng.shuffle(owner)
    units = PrivacyUnits.from_ids(owner * 7919 + 11)  # arbitrary ID values
    q, steps = 0.05, 4000
    sampler = UnitPoissonSampler(units, q, 1, _seeded(5))
    rows, users = _sizes(sampler, steps)
    _assert_moments(users, 300 * q, 300 * q * (1 - q), steps)
    _assert_moments(rows, q * sizes.sum(), q * (1 - q) * (sizes ** 2).sum(), steps)
    sampler.steps_per_epoch = 50
    for batch in sampler:  # a drawn user brings every one of its rows
        drawn = set(owner[batch])
        assert set(np.flatnonzero(np.isin(owner, list(drawn)))) == set(batch)


def test_epoch_seeding_replays_for_resume():
    units = PrivacyUnits.per_example(200)
    a = UnitPoissonSampler(units, 0.1, 5, _seeded(1))
    b = UnitPoissonSampler(units, 0.1, 5, _seeded(1))
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert list(UnitPoissonSampler(units, 0.1, 5, _seeded(2))) != list(UnitPoissonSampler(units, 0.1, 5, _seeded(1)))
    secure = PrivacyRandomness.secure()
    assert list(UnitPoissonSampler(units, 0.1, 5, secure)) == list(UnitPoissonSampler(units, 0.1, 5, secure))
    assert list(UnitPoissonSampler(units, 0.1, 5, PrivacyRandomness.secure())) != list(
        UnitPoissonSampler(units, 0.1, 5, secure))  # a fresh key: fresh draws


def test_ranks_take_disjoint_shares_of_one_draw():
    units = PrivacyUnits.from_ids(np.repeat(np.arange(100), 2))
    shared = _seeded(7)
    whole = list(UnitPoissonSampler(units, 0.2, 6, shared))
    shares = [list(UnitPoissonSampler(units, 0.2, 6, shared, rank=r, world_size=2)) for r in (0, 1)]
    for step, batch in enumerate(whole):
        zero, one = shares[0][step], shares[1][step]
        assert not set(zero) & set(one) and sorted(zero + one) == sorted(batch)
        assert abs(len(zero) - len(one)) <= 2  # one unit (two rows) apart at most


def test_physical_batches_keep_units_whole_and_bounded():
    owner = np.array([0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 4, 5])
    units = PrivacyUnits.from_ids(owner)

    def collate(examples):
        return {"input_ids": torch.tensor([[e] for e in examples])}

    cut = PhysicalBatches(collate, units, physical_batch_size=4)
    rows = units.rows_of(np.arange(units.num_units))
    out = cut([(int(r), int(r)) for r in rows])
    assert out["num_units"] == 6 and out["num_rows"] == 12
    pieces = [b["input_ids"].view(-1).tolist() for b in out[PHYSICAL_BATCHES]]
    assert sorted(r for p in pieces for r in p) == list(range(12))
    for p in pieces:
        assert len(p) <= 4
        for u in set(owner[p]):  # every unit in a piece has all its rows there
            assert set(np.flatnonzero(owner == u)) <= set(p)
    empty = cut([])
    assert empty == {PHYSICAL_BATCHES: [], "num_units": 0, "num_rows": 0}


def test_sample_rate_must_be_a_probability():
    with pytest.raises(ValueError, match="sample_rate"):
        UnitPoissonSampler(PrivacyUnits.per_example(10), 1.5, 1, _seeded(0))


def _seeded(seed: int) -> PrivacyRandomness:
    return PrivacyRandomness.from_seed(seed)
