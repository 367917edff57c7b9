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
from tests.privacy.helpers import BATCH, DELTA, N, logged_epsilons, opacus_epsilon, private_trainer


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
    cfg = memsinks.PrivacyConfig(noise_multiplier=1.0, accountant="rdp", reproducible=True)
    kwargs = dict(max_steps=6, per_device_train_batch_size=BATCH, save_strategy="steps", save_steps=3)
    first = private_trainer(out, cfg, callbacks=[crash], **kwargs)
    with pytest.raises(_Crash):
        first.train()
    second = private_trainer(out, cfg, **kwargs)
    second.train(resume_from_checkpoint=str(out / "checkpoint-3"))
    return second


def test_resume_continues_the_same_epsilon_curve(tmp_path, caplog):
    cfg = memsinks.PrivacyConfig(noise_multiplier=1.0, accountant="rdp", reproducible=True)
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
    assert after[4] == pytest.approx(opacus_epsilon(RDPAccountant, 5, 1.0, BATCH / N, DELTA), rel=1e-12)
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


# ------------------------------------------------------------------------- tampered ledgers (issue 15, item 2)
@pytest.fixture(scope="module")
def six_steps(tmp_path_factory):
    """A finished private run of 6 steps with checkpoints at 3 and 6 (reproducible, so resumes are comparable)."""
    out = tmp_path_factory.mktemp("six") / "run"
    cfg = memsinks.PrivacyConfig(noise_multiplier=1.0, accountant="rdp", reproducible=True)
    private_trainer(out, cfg, max_steps=6, per_device_train_batch_size=BATCH, save_strategy="steps",
                    save_steps=3).train()
    return out


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _resume(out, checkpoint, reproducible=True):
    cfg = memsinks.PrivacyConfig(noise_multiplier=1.0, accountant="rdp", reproducible=reproducible)
    trainer = private_trainer(out, cfg, max_steps=6, per_device_train_batch_size=BATCH, save_strategy="steps",
                              save_steps=3)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    return trainer


def _emptied(d):
    d["history"], d["steps"] = [], 0


def _fewer(d):
    d["history"][0][2], d["steps"] = 1, 1


def _sigma(d):
    d["history"][0][0] = d["noise_multiplier"] = 100.0


def _rate(d):
    d["history"][0][1] = d["sample_rate"] = 0.01


@pytest.mark.parametrize("change, message", [
    (_emptied, r"records 0 private steps but the checkpoint is at step 3"),
    (_fewer, r"records 1 private steps but the checkpoint is at step 3"),
    (_sigma, r"noise multiplier 100 where this run's configuration gives 1 "),
    (_rate, r"sampling rate 0.01 where this run's is 0.125"),
], ids=["emptied", "fewer steps", "sigma edited", "rate edited"])
def test_a_tampered_checkpoint_ledger_is_refused_and_nothing_is_written(six_steps, tmp_path, change, message):
    out = _copy_run(six_steps, tmp_path / "run")
    (out / LEDGER_NAME).unlink()  # without the output folder's ledger, the checkpoint's is all there is
    _edit(out / "checkpoint-3" / LEDGER_NAME, change)
    before = (out / "checkpoint-3" / LEDGER_NAME).read_bytes()
    with pytest.raises(ValueError, match=message):
        _resume(out, out / "checkpoint-3")
    assert (out / "checkpoint-3" / LEDGER_NAME).read_bytes() == before
    assert not (out / LEDGER_NAME).exists()


def test_resuming_into_another_output_dir_carries_the_ledger_along(six_steps, tmp_path):
    # the first run went on to step 6 after checkpoint-3: a branch from checkpoint-3 must count those steps too
    before = (six_steps / LEDGER_NAME).read_bytes()
    branch = _resume(tmp_path / "branch", six_steps / "checkpoint-3")
    assert branch.state.global_step == 6
    ledger = json.loads((tmp_path / "branch" / LEDGER_NAME).read_text())
    assert ledger["steps"] == 9  # 3 shared + 3 of the first run + 3 of the branch
    assert ledger["epsilon"] == pytest.approx(opacus_epsilon(RDPAccountant, 9, 1.0, BATCH / N, branch.privacy.delta),
                                              rel=1e-12)
    assert (six_steps / LEDGER_NAME).read_bytes() == before  # the first run's own ledger is not touched


def _target_run(out, **kwargs):
    cfg = memsinks.PrivacyConfig(target_epsilon=3.0, accountant="rdp", reproducible=True)
    return private_trainer(out, cfg, max_steps=6, per_device_train_batch_size=BATCH, save_strategy="steps",
                           save_steps=3, **kwargs)


def test_a_target_epsilon_ledger_calibrated_by_another_search_resumes_at_its_own_noise(tmp_path):
    """An earlier memsinks calibrated with Opacus's bisection: its σ meets the same target within the tolerance but is
    not this version's. Its checkpoint resumes and keeps spending at that σ; a σ that misses the target is refused."""
    from opacus.accountants.utils import get_noise_multiplier

    from memsinks.privacy.accounting import EPS_TOLERANCE

    first = tmp_path / "first"
    _target_run(first).train()
    state = json.loads((first / "checkpoint-3" / LEDGER_NAME).read_text())
    theirs = get_noise_multiplier(target_epsilon=3.0, target_delta=state["delta"], sample_rate=state["sample_rate"],
                                  steps=state["planned_steps"], accountant="rdp", epsilon_tolerance=EPS_TOLERANCE)
    assert not math.isclose(theirs, state["noise_multiplier"], rel_tol=1e-6)  # the two searches land apart

    def with_sigma(sigma, name):
        out = _copy_run(first, tmp_path / name)
        (out / LEDGER_NAME).unlink()
        _edit(out / "checkpoint-3" / LEDGER_NAME, lambda d: d.update(
            noise_multiplier=sigma, history=[[sigma, h[1], h[2]] for h in d["history"]]))
        return out

    out = with_sigma(theirs, "earlier")
    resumed = _target_run(out)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-3"))
    ledger = json.loads((out / LEDGER_NAME).read_text())
    assert ledger["history"] == [[theirs, state["sample_rate"], 6]] and ledger["noise_multiplier"] == theirs
    assert ledger["epsilon"] == pytest.approx(opacus_epsilon(RDPAccountant, 6, theirs, BATCH / N, state["delta"]),
                                              rel=1e-12)
    off = with_sigma(state["noise_multiplier"] * 1.05, "off")  # ε well under the target: not a calibration of it
    before = (off / "checkpoint-3" / LEDGER_NAME).read_bytes()
    with pytest.raises(ValueError, match="noise multiplier"):
        _target_run(off).train(resume_from_checkpoint=str(off / "checkpoint-3"))
    assert (off / "checkpoint-3" / LEDGER_NAME).read_bytes() == before and not (off / LEDGER_NAME).exists()
