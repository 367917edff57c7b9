"""ε as the Trainer reports it: equal to Opacus's accountants, persisted every step, continued on resume."""

import json
import logging
import math
import os

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from transformers import TrainerCallback

import memsinks
from memsinks.privacy.ledger import LEDGER_NAME
from tests.conftest import tiny_model
from tests.privacy_helpers import pattern_dataset, stock_trainer

N, BATCH = 64, 8  # sampling rate 1/8


def _private_trainer(out, config, callbacks=(), **args):
    config.physical_batch_size = 32  # one pass holds a whole Poisson draw (expected 8)
    trainer = stock_trainer(tiny_model("gpt2"), pattern_dataset(N), out, **args)
    for cb in callbacks:
        trainer.add_callback(cb)
    return memsinks.make_private(trainer, config)


def _epsilons(trainer):
    return {h["step"]: h["privacy/epsilon"] for h in trainer.state.log_history if "loss" in h}


def _independent(accountant_cls, steps, sigma, q, delta):
    acc = accountant_cls()
    for _ in range(steps):
        acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc.get_epsilon(delta=delta)


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
    trainer = _private_trainer(tmp_path, cfg, callbacks=[on_disk], max_steps=4, per_device_train_batch_size=BATCH)
    trainer.train()
    eps = _epsilons(trainer)
    assert sorted(eps) == [1, 2, 3, 4]
    for step, value in eps.items():
        assert value == pytest.approx(_independent(cls, step, 1.1, BATCH / N, 1 / N), rel=1e-9)
    assert eps[4] > eps[3] > eps[2] > eps[1] > 0
    assert all(h.get("privacy/delta") == 1 / N for h in trainer.state.log_history if "loss" in h)
    assert not any("grad_norm" in h for h in trainer.state.log_history)  # a statistic of the un-noised gradient
    assert on_disk.seen == [(1, 1), (2, 2), (3, 3), (4, 4)]  # written before each step's update, never behind


def test_target_epsilon_is_met_and_training_stops_when_spent(tmp_path, caplog):
    cfg = memsinks.PrivacyConfig(target_epsilon=3.0, accountant="rdp")
    trainer = _private_trainer(tmp_path, cfg, max_steps=6, per_device_train_batch_size=BATCH, logging_steps=50)
    sigma = trainer._memsinks_privacy.noise_multiplier
    assert _independent(RDPAccountant, 6, sigma, BATCH / N, 1 / N) <= 3.0  # calibrated for the planned 6 steps
    trainer.args.max_steps = 60  # the user asks for ten times more training than the budget pays for
    with caplog.at_level(logging.WARNING, logger="memsinks"):
        trainer.train()
    steps = trainer.state.global_step
    assert 6 <= steps < 60
    assert _independent(RDPAccountant, steps, sigma, BATCH / N, 1 / N) <= 3.0
    assert _independent(RDPAccountant, steps + 1, sigma, BATCH / N, 1 / N) > 3.0
    assert "Privacy budget spent" in caplog.text
    final = json.load(open(tmp_path / LEDGER_NAME))
    assert final["steps"] == steps and final["epsilon"] <= 3.0
    assert trainer.state.log_history[-1]["privacy/epsilon"] == pytest.approx(final["epsilon"])


def test_unreachable_target_epsilon_fails_before_training(tmp_path):
    trainer = stock_trainer(tiny_model("gpt2"), pattern_dataset(N), tmp_path, per_device_train_batch_size=32,
                            max_steps=200)
    with pytest.raises(ValueError, match=r"target_epsilon=0.01 .* noise multiplier of \d+.*Raise target_epsilon"):
        memsinks.make_private(trainer, memsinks.PrivacyConfig(target_epsilon=0.01, accountant="rdp"))


class _Crash(Exception):
    pass


class _CrashAt(TrainerCallback):
    """Simulates a crash: after the checkpoint at ``save_step`` is written, or at the end of ``step``."""

    def __init__(self, event, step):
        self.event, self.step = event, step

    def on_save(self, args, state, control, **kwargs):
        if self.event == "save" and state.global_step == self.step:
            raise _Crash()

    def on_step_end(self, args, state, control, **kwargs):
        if self.event == "step" and state.global_step == self.step:
            raise _Crash()


def _resume_run(out, crash, caplog=None):
    cfg = memsinks.PrivacyConfig(noise_multiplier=1.0, accountant="rdp")
    kwargs = dict(max_steps=6, per_device_train_batch_size=BATCH, save_strategy="steps", save_steps=3)
    first = _private_trainer(out, cfg, callbacks=[crash], **kwargs)
    with pytest.raises(_Crash):
        first.train()
    second = _private_trainer(out, cfg, **kwargs)
    second.train(resume_from_checkpoint=str(out / "checkpoint-3"))
    return second


def test_resume_continues_the_same_epsilon_curve(tmp_path, caplog):
    cfg = memsinks.PrivacyConfig(noise_multiplier=1.0, accountant="rdp")
    whole = _private_trainer(tmp_path / "whole", cfg, max_steps=6, per_device_train_batch_size=BATCH)
    whole.train()
    curve = _epsilons(whole)

    resumed = _resume_run(tmp_path / "resumed", _CrashAt("save", 3))  # stopped right after checkpoint-3
    after = _epsilons(resumed)
    assert sorted(after) == [1, 2, 3, 4, 5, 6]  # 1-3 from the checkpoint's state, 4-6 from the resumed run
    for step in range(1, 7):
        assert after[step] == pytest.approx(curve[step], rel=1e-12)
    losses = {h["step"]: h["loss"] for h in resumed.state.log_history if "loss" in h}
    whole_losses = {h["step"]: h["loss"] for h in whole.state.log_history if "loss" in h}
    assert losses[4] == pytest.approx(whole_losses[4], rel=1e-5)  # same Poisson draws and noise after resuming

    with caplog.at_level(logging.WARNING, logger="memsinks"):
        crashed = _resume_run(tmp_path / "crashed", _CrashAt("step", 4))  # step 4 ran, then the process died
    after = _epsilons(crashed)
    # the lost step 4 stays counted: global step s now pays for s + 1 steps; ε never goes back
    assert after[4] == pytest.approx(_independent(RDPAccountant, 5, 1.0, BATCH / N, 1 / N), rel=1e-12)
    assert after[4] > curve[4]
    assert "1 more private steps after that checkpoint" in caplog.text
    assert json.load(open(tmp_path / "crashed" / LEDGER_NAME))["steps"] == 7


def test_a_fresh_run_cannot_reset_epsilon(tmp_path):
    cfg = memsinks.PrivacyConfig(noise_multiplier=1.0, accountant="rdp")
    _private_trainer(tmp_path, cfg, max_steps=2, per_device_train_batch_size=BATCH).train()
    again = _private_trainer(tmp_path, cfg, max_steps=2, per_device_train_batch_size=BATCH)
    with pytest.raises(ValueError, match="Starting afresh would reset ε"):
        again.train()
    with pytest.raises(ValueError, match="not saved by a private run"):
        os.makedirs(tmp_path / "checkpoint-9")
        torch.save({}, tmp_path / "checkpoint-9" / "dummy.pt")
        again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-9"))


def test_checkpoints_carry_config_and_epsilon(tmp_path):
    cfg = memsinks.PrivacyConfig(noise_multiplier=1.0, accountant="rdp", max_grad_norm=0.5)
    trainer = _private_trainer(tmp_path, cfg, max_steps=4, per_device_train_batch_size=BATCH, save_strategy="steps",
                               save_steps=2)
    trainer.train()
    eps = _epsilons(trainer)
    for step in (2, 4):
        ckpt = tmp_path / f"checkpoint-{step}"
        assert memsinks.PrivacyConfig.from_pretrained(ckpt) == cfg
        ledger = json.load(open(ckpt / LEDGER_NAME))
        assert ledger["steps"] == step and ledger["epsilon"] == pytest.approx(eps[step])
        assert ledger["sampling"] == "poisson" and ledger["privacy_unit"] == "example" and ledger["num_units"] == N
    final = json.load(open(tmp_path / LEDGER_NAME))
    assert final["epsilon"] == pytest.approx(eps[4]) and math.isfinite(final["epsilon"])
