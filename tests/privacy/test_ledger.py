"""The ledger (memsinks.privacy.ledger): persisted every step, continued on resume, never reset, in every checkpoint."""

import json
import logging
import math
import os

import pytest
import torch
from opacus.accountants import RDPAccountant
from transformers import TrainerCallback

import memsinks
from memsinks.privacy.ledger import LEDGER_NAME
from tests.privacy.helpers import BATCH, N, logged_epsilons, opacus_epsilon, private_trainer


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
    first = private_trainer(out, cfg, callbacks=[crash], **kwargs)
    with pytest.raises(_Crash):
        first.train()
    second = private_trainer(out, cfg, **kwargs)
    second.train(resume_from_checkpoint=str(out / "checkpoint-3"))
    return second


def test_resume_continues_the_same_epsilon_curve(tmp_path, caplog):
    cfg = memsinks.PrivacyConfig(noise_multiplier=1.0, accountant="rdp")
    whole = private_trainer(tmp_path / "whole", cfg, max_steps=6, per_device_train_batch_size=BATCH)
    whole.train()
    curve = logged_epsilons(whole)

    resumed = _resume_run(tmp_path / "resumed", _CrashAt("save", 3))  # stopped right after checkpoint-3
    after = logged_epsilons(resumed)
    assert sorted(after) == [1, 2, 3, 4, 5, 6]  # 1-3 from the checkpoint's state, 4-6 from the resumed run
    for step in range(1, 7):
        assert after[step] == pytest.approx(curve[step], rel=1e-12)
    losses = {h["step"]: h["loss"] for h in resumed.state.log_history if "loss" in h}
    whole_losses = {h["step"]: h["loss"] for h in whole.state.log_history if "loss" in h}
    assert losses[4] == pytest.approx(whole_losses[4], rel=1e-5)  # same Poisson draws and noise after resuming

    with caplog.at_level(logging.WARNING, logger="memsinks"):
        crashed = _resume_run(tmp_path / "crashed", _CrashAt("step", 4))  # step 4 ran, then the process died
    after = logged_epsilons(crashed)
    # the lost step 4 stays counted: global step s now pays for s + 1 steps; ε never goes back
    assert after[4] == pytest.approx(opacus_epsilon(RDPAccountant, 5, 1.0, BATCH / N, 1 / N), rel=1e-12)
    assert after[4] > curve[4]
    assert "1 more private steps after that checkpoint" in caplog.text
    assert json.load(open(tmp_path / "crashed" / LEDGER_NAME))["steps"] == 7


def test_a_fresh_run_cannot_reset_epsilon(tmp_path):
    cfg = memsinks.PrivacyConfig(noise_multiplier=1.0, accountant="rdp")
    private_trainer(tmp_path, cfg, max_steps=2, per_device_train_batch_size=BATCH).train()
    again = private_trainer(tmp_path, cfg, max_steps=2, per_device_train_batch_size=BATCH)
    with pytest.raises(ValueError, match="Starting afresh would reset ε"):
        again.train()
    with pytest.raises(ValueError, match="not saved by a private run"):
        os.makedirs(tmp_path / "checkpoint-9")
        torch.save({}, tmp_path / "checkpoint-9" / "dummy.pt")
        again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-9"))


def test_checkpoints_carry_config_and_epsilon(tmp_path):
    cfg = memsinks.PrivacyConfig(noise_multiplier=1.0, accountant="rdp", max_grad_norm=0.5)
    trainer = private_trainer(tmp_path, cfg, max_steps=4, per_device_train_batch_size=BATCH, save_strategy="steps",
                               save_steps=2)
    trainer.train()
    eps = logged_epsilons(trainer)
    for step in (2, 4):
        ckpt = tmp_path / f"checkpoint-{step}"
        assert memsinks.PrivacyConfig.from_pretrained(ckpt) == cfg
        ledger = json.load(open(ckpt / LEDGER_NAME))
        assert ledger["steps"] == step and ledger["epsilon"] == pytest.approx(eps[step])
        assert ledger["sampling"] == "poisson" and ledger["privacy_unit"] == "example" and ledger["num_units"] == N
    final = json.load(open(tmp_path / LEDGER_NAME))
    assert final["epsilon"] == pytest.approx(eps[4]) and math.isfinite(final["epsilon"])
