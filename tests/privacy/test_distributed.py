"""DP-SGD across processes (DDP over gloo, 2 CPU processes through accelerate's launcher): one Poisson draw shared
by the ranks, per-unit clipping on each, the clipped sums added up, the noise drawn once, one ledger.

Two launches in all (each costs tens of seconds): a 2-process run that also measures the noise, and a 2-process
resume of its checkpoint. The 1-process references run in this process (tests/privacy/distributed_run.py).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.privacy.distributed_run import NOISE_C, train
from tests.privacy.helpers import DISTRIBUTED_SIGMA, launch_private_run

pytestmark = pytest.mark.slow


def _weights(directory):
    return torch.load(directory / "weights.pt")


def _result(directory):
    return json.loads((directory / "result.json").read_text())


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    launch_private_run(out, "--measure-noise")
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    trainer = train(str(out), None)
    return trainer, out


def test_two_processes_take_the_one_process_steps_with_the_noise_drawn_once(two_processes, one_process):
    trainer, _ = one_process
    result = _result(two_processes)
    assert result["world_size"] == 2 and result["steps"] == result["global_step"] == 4
    assert result["expected_batch_size"] == trainer.privacy.expected_batch_size == 8  # 4 per process
    assert result["sample_rate"] == trainer.privacy.sample_rate
    assert result["epsilon"] == trainer.privacy.ledger.epsilon()
    # the same sampled units, clipped on two ranks and summed, and the same noise added once: the same model
    reference = trainer.model.state_dict()
    for name, value in _weights(two_processes).items():
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-6, msg=name)
    # measured over 40 steps x 20,000 coordinates: σC, not √2 σC (noise added by both ranks)
    assert result["noise_std"] == pytest.approx(DISTRIBUTED_SIGMA * NOISE_C, rel=0.01)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_checkpoint_of_two_processes_resumes_under_one_and_two(two_processes, tmp_path, processes):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(two_processes / "checkpoint-2", out / "checkpoint-2")
    if processes == 2:
        launch_private_run(out, "--resume", str(out / "checkpoint-2"))
        weights, result = _weights(out), _result(out)
    else:
        trainer = train(str(out), str(out / "checkpoint-2"))
        weights = trainer.model.state_dict()
        result = {"steps": trainer.privacy.ledger.steps, "epsilon": trainer.privacy.ledger.epsilon()}
    uninterrupted = _result(two_processes)
    assert result["steps"] == 4 and result["epsilon"] == uninterrupted["epsilon"]
    for name, value in _weights(two_processes).items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-6, msg=name)
    ledger = json.loads((out / "privacy_ledger.json").read_text())
    assert ledger["steps"] == 4
