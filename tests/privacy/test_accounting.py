"""ε as the Trainer reports it (memsinks.privacy.accounting): equal to Opacus's accountants, calibrated, budgeted."""

import json
import logging
import os

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from transformers import TrainerCallback

import memsinks
from memsinks.privacy.ledger import LEDGER_NAME
from tests.conftest import tiny_model
from tests.privacy.helpers import (BATCH, DELTA, N, logged_epsilons, opacus_epsilon, pattern_dataset,
                                     private_trainer, stock_trainer)


class _LedgerOnDisk(TrainerCallback):
    """Reads the ledger file after every optimizer step."""

    def __init__(self):
        self.seen = []

    def on_step_end(self, args, state, control, **kwargs):
        with open(os.path.join(args.output_dir, LEDGER_NAME)) as f:
            self.seen.append((state.global_step, json.load(f)["steps"]))


@pytest.mark.parametrize("accountant, cls", [("prv", PRVAccountant), ("rdp", RDPAccountant)])
def test_logged_epsilon_equals_an_independent_opacus_accountant(tmp_path, accountant, cls):
    on_disk = _LedgerOnDisk()
    cfg = memsinks.PrivacyConfig(noise_multiplier=1.1, accountant=accountant)
    trainer = private_trainer(tmp_path, cfg, callbacks=[on_disk], max_steps=4, per_device_train_batch_size=BATCH)
    trainer.train()
    eps = logged_epsilons(trainer)
    assert sorted(eps) == [1, 2, 3, 4]
    for step, value in eps.items():
        assert value == pytest.approx(opacus_epsilon(cls, step, 1.1, BATCH / N, DELTA), rel=1e-9)
    assert eps[4] > eps[3] > eps[2] > eps[1] > 0
    assert all(h.get("privacy/delta") == DELTA for h in trainer.state.log_history if "loss" in h)
    assert not any("grad_norm" in h for h in trainer.state.log_history)  # a statistic of the un-noised gradient
    assert on_disk.seen == [(1, 1), (2, 2), (3, 3), (4, 4)]  # written before each step's update, never behind


def test_target_epsilon_is_met_and_training_stops_when_spent(tmp_path, caplog):
    cfg = memsinks.PrivacyConfig(target_epsilon=3.0, accountant="rdp")
    trainer = private_trainer(tmp_path, cfg, max_steps=6, per_device_train_batch_size=BATCH, logging_steps=50)
    sigma = trainer.privacy.noise_multiplier
    assert opacus_epsilon(RDPAccountant, 6, sigma, BATCH / N, DELTA) <= 3.0  # calibrated for the planned 6 steps
    trainer.args.max_steps = 60  # the user asks for ten times more training than the budget pays for
    with caplog.at_level(logging.WARNING, logger="memsinks"):
        trainer.train()
    steps = trainer.state.global_step
    assert 6 <= steps < 60
    assert opacus_epsilon(RDPAccountant, steps, sigma, BATCH / N, DELTA) <= 3.0
    assert opacus_epsilon(RDPAccountant, steps + 1, sigma, BATCH / N, DELTA) > 3.0
    assert "Privacy budget spent" in caplog.text
    final = json.load(open(tmp_path / LEDGER_NAME))
    assert final["steps"] == steps and final["epsilon"] <= 3.0
    assert trainer.state.log_history[-1]["privacy/epsilon"] == pytest.approx(final["epsilon"])


def test_unreachable_target_epsilon_fails_before_training(tmp_path):
    trainer = stock_trainer(tiny_model("gpt2"), pattern_dataset(N), tmp_path, per_device_train_batch_size=32,
                            max_steps=200)
    with pytest.raises(ValueError, match=r"target_epsilon=0.01 .* noise multiplier of \d+.*Raise target_epsilon"):
        memsinks.make_private(trainer, memsinks.PrivacyConfig(target_epsilon=0.01, accountant="rdp"))


def test_epsilon_is_never_negative_and_a_target_below_the_accountants_resolution_is_refused(tmp_path):
    from memsinks.privacy.accounting import epsilon_of

    for sigma in (2.0, 5.0, 20.0):  # little privacy loss: PRV's numerical estimate falls below zero
        assert epsilon_of("prv", [(sigma, 1 / 64, 1)], 1 / 64) >= 0
    trainer = stock_trainer(tiny_model("gpt2"), pattern_dataset(N), tmp_path, max_steps=4)
    with pytest.raises(ValueError, match=r"target_epsilon=0.0001 .*cannot be reached"):
        memsinks.make_private(trainer, memsinks.PrivacyConfig(target_epsilon=1e-4, delta=1 / 64,
                                                              allow_large_delta=True))


@pytest.mark.parametrize("accountant, cls, sample_rate, steps, target", [
    ("prv", PRVAccountant, 0.01, 1000, 1.0), ("rdp", RDPAccountant, 0.16, 7, 8.0),
    ("rdp", RDPAccountant, 0.25, 200, 3.0)])
def test_calibrated_noise_spends_the_target_to_the_tolerance_as_opacus_search_does(accountant, cls, sample_rate, steps,
                                                                                    target):
    from opacus.accountants.utils import get_noise_multiplier

    from memsinks.privacy.accounting import EPS_TOLERANCE, calibrate_noise

    sigma = calibrate_noise(target, 1e-5, sample_rate, steps, accountant)
    acc = cls()
    acc.history = [(sigma, sample_rate, steps)]
    kwargs = {"eps_error": 0.01} if accountant == "prv" else {}
    assert target - EPS_TOLERANCE <= acc.get_epsilon(delta=1e-5, **kwargs) <= target
    theirs = get_noise_multiplier(target_epsilon=target, target_delta=1e-5, sample_rate=sample_rate, steps=steps,
                                  accountant=accountant, epsilon_tolerance=EPS_TOLERANCE, **kwargs)
    assert sigma <= theirs * 1.01  # no more noise than Opacus's bisection finds (where ε is flat, less)


def test_noise_search_lands_in_the_band_in_a_handful_of_evaluations_and_never_returns_an_uncertified_noise():
    import math

    from memsinks.privacy.accounting import smallest_noise

    seen = []

    def smooth(sigma):  # ε falling like a power of σ; the accountant overflows below σ = 0.05 and reads 0 above 60
        seen.append(sigma)
        if sigma < 0.05:
            raise OverflowError("too little noise")
        return 0.0 if sigma > 60 else 3.0 / sigma ** 1.7

    for target in (0.2, 1.0, 8.0, 40.0):
        seen.clear()
        sigma = smallest_noise(smooth, target, 0.01, 100.0, smooth(100.0))
        assert target - 0.01 <= smooth(sigma) <= target, target
        assert len(seen) <= 10, (target, len(seen))  # bisection over [0, 20] to this band takes about 17
    in_band = (3.0 / 7.995) ** (1 / 1.7)
    eps = smooth(in_band)
    seen.clear()
    assert smallest_noise(smooth, 8.0, 0.01, in_band, eps) == in_band and not seen  # nothing left to search

    def cliff(sigma):  # no σ gives an ε in [7.99, 8]: the answer is the smallest certified one found
        return 10.0 if sigma < 1.0 else 1.0

    sigma = smallest_noise(cliff, 8.0, 0.01, 100.0, cliff(100.0))
    assert cliff(sigma) <= 8.0 and sigma == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="ε = 10 > 8"):
        smallest_noise(cliff, 8.0, 0.01, 0.5, cliff(0.5))
    assert not math.isnan(sigma)


def test_each_distinct_history_is_accounted_once_and_equal_histories_in_any_form_share_it(monkeypatch):
    from memsinks.privacy import accounting

    calls = []
    real = PRVAccountant.get_epsilon

    def counted(self, *args, **kwargs):
        calls.append(list(self.history))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(PRVAccountant, "get_epsilon", counted)
    accounting._epsilon.cache_clear()  # what earlier tests in this process computed
    history = [(1.3, 0.05, 17)]
    first = accounting.epsilon_of("prv", history, 1e-5)
    assert accounting.epsilon_of("prv", [[1.3, 0.05, 17], [2.0, 0.05, 0]], 1e-5) == first  # as a ledger file holds it
    assert len(calls) == 1
    assert accounting.epsilon_of("prv", history, 1e-6) > first  # another δ, another history: computed
    assert accounting.epsilon_of("prv", [(1.3, 0.05, 18)], 1e-5) > first
    assert len(calls) == 3 and calls[0] == calls[1] == [(1.3, 0.05, 17)] and calls[2] == [(1.3, 0.05, 18)]
    assert first == pytest.approx(opacus_epsilon(PRVAccountant, 17, 1.3, 0.05, 1e-5), rel=1e-9)
