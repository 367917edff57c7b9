"""Where the randomness of sampling and noise comes from (memsinks.privacy.randomness): the OS's entropy by default,
never the checkpoint; the same draws again only under the explicit, insecure reproducible switch."""

import logging

import pytest
import torch

import memsinks
from tests.privacy.helpers import BATCH, private_trainer


def _weights(trainer) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])


def _train(out, reproducible, **kwargs):
    cfg = memsinks.PrivacyConfig(noise_multiplier=1.0, accountant="rdp", reproducible=reproducible)
    trainer = private_trainer(out, cfg, max_steps=2, per_device_train_batch_size=BATCH, **kwargs)
    trainer.train()
    return trainer


def test_two_default_runs_with_the_same_seed_draw_different_batches_and_noise(tmp_path):
    a, b = _train(tmp_path / "a", False), _train(tmp_path / "b", False)
    assert a.args.seed == b.args.seed
    assert not torch.equal(_weights(a), _weights(b))


def test_the_reproducible_switch_repeats_a_run_and_says_it_is_insecure(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="memsinks"):
        a = _train(tmp_path / "a", True)
    b = _train(tmp_path / "b", True)
    assert torch.equal(_weights(a), _weights(b))
    assert "reproducible=True" in caplog.text and "not private" in caplog.text


def test_a_checkpoint_does_not_determine_the_randomness_after_it(tmp_path):
    first = _train(tmp_path / "run", False, save_strategy="steps", save_steps=1)
    checkpoint = tmp_path / "run" / "checkpoint-1"
    resumed = []
    for name in ("x", "y"):
        cfg = memsinks.PrivacyConfig(noise_multiplier=1.0, accountant="rdp")
        trainer = private_trainer(tmp_path / name, cfg, max_steps=2, per_device_train_batch_size=BATCH)
        trainer.train(resume_from_checkpoint=str(checkpoint))
        resumed.append(_weights(trainer))
    assert first.state.global_step == 2
    assert not torch.equal(resumed[0], resumed[1])


@pytest.mark.parametrize("rate", [1e-7])
def test_the_realised_sampling_rate_at_a_tiny_rate_is_within_its_binomial_interval(rate):
    import numpy as np

    from memsinks.privacy.randomness import PrivacyRandomness
    from memsinks.privacy.sampling import PrivacyUnits, UnitPoissonSampler

    units, steps = PrivacyUnits.per_example(1_000_000), 20_000
    sampler = UnitPoissonSampler(units, rate, steps, PrivacyRandomness.from_seed(0))
    drawn = sum(len(batch) for batch in sampler)
    trials = units.num_units * steps
    mean, sd = trials * rate, np.sqrt(trials * rate * (1 - rate))
    assert abs(drawn - mean) < 5 * sd, (drawn, mean)  # float32 draws give +19% here: 8 standard deviations off
