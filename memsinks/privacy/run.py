"""``PrivateRun``: what ``make_private`` fixed for one private trainer, and the ledger and randomness of its training.

The run holds the settings every private step uses (units, sampling rate, noise, clipper,
forward inputs) and connects the ledger to training: it opens it when ``train()`` starts
(new, resumed, or continued by a second ``train()`` of the same trainer), records each step
from the optimizer's step hook, and knows the step at which a target ε is spent. Under
several processes rank 0 reads and writes the ledger and the other ranks receive it, so
every rank counts the same steps and stops at the same one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

from memsinks.privacy.config import PrivacyConfig
from memsinks.privacy.grad_sample import PerUnitClipper
from memsinks.privacy.inputs import ForwardInputs
from memsinks.privacy.ledger import LEDGER_NAME, PrivacyLedger
from memsinks.privacy.randomness import PrivacyRandomness
from memsinks.privacy.sampling import PrivacyUnits

logger = logging.getLogger("memsinks")


@dataclass
class PrivateRun:
    """Everything the private trainer needs, fixed by ``make_private`` (σ possibly re-read on resume).

    Attributes:
        delta: the δ of the guarantee.
        sample_rate: q, the probability that a unit is in a step's batch.
        expected_batch_size: units per step on average (q x units), over all processes; the
            noisy sum is divided by it.
        noise_multiplier: σ; the noise's standard deviation is σ x ``config.max_grad_norm``.
        seed: ``TrainingArguments.seed``, used only by ``PrivacyConfig(reproducible=True)``.
        ledger: the run's ledger, opened when ``train()`` starts.
        randomness: the draws' key, made anew (and shared across processes) when ``train()`` starts.
        budget_steps: with a target ε, the step count at which it is spent.
    """

    config: PrivacyConfig
    clipper: PerUnitClipper
    units: PrivacyUnits
    dataset: Any
    delta: float
    sample_rate: float
    expected_batch_size: int
    physical_batch_size: int
    steps_per_epoch: int
    planned_steps: int
    noise_multiplier: float
    inputs: ForwardInputs
    seed: int = 0
    ledger: PrivacyLedger | None = None
    randomness: PrivacyRandomness | None = None
    budget_steps: int | None = None
    stop_logged: bool = field(default=False)

    def ledger_info(self) -> dict:
        return {
            "privacy_unit": self.config.privacy_unit,
            "num_units": self.units.num_units,
            "sample_rate": self.sample_rate,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.config.max_grad_norm,
            "expected_batch_size": self.expected_batch_size,
            "target_epsilon": self.config.target_epsilon,
            "planned_steps": self.planned_steps,
            "sampling": "poisson",
        }

    def on_optimizer_step(self, optimizer) -> None:
        """Opacus's step hook: runs after the noise is added, before the parameters change."""
        self.ledger.record_step(optimizer.noise_multiplier, self.sample_rate)

    def begin_training(self, output_dir: str, checkpoint: str | None, is_main: bool) -> None:
        """At ``train()``: open the ledger (rank 0, then shared), set the budget, write the ledger, draw a key."""
        error = state = None
        if is_main:
            try:
                self._open_ledger(output_dir, checkpoint)
                self._set_budget()
                state = (self.ledger.state_dict(), self.noise_multiplier, self.budget_steps)
            except ValueError as err:
                error = str(err)
        if _distributed():
            box = [(error, state)]
            dist.broadcast_object_list(box, src=0)
            error, state = box[0]
        if error is not None:
            raise ValueError(error)
        if not is_main:
            ledger_state, self.noise_multiplier, self.budget_steps = state
            self.ledger = PrivacyLedger(self.config.accountant, self.delta, self.ledger_info())
            self.ledger.load_state_dict(ledger_state, "rank 0's ledger")
        else:
            self.ledger.save(self.ledger.path)
        self.stop_logged = False
        self.randomness = self.new_randomness().shared()

    def new_randomness(self) -> PrivacyRandomness:
        """A fresh key from the OS's entropy, or the seed's key under ``reproducible=True``."""
        return PrivacyRandomness.from_seed(self.seed) if self.config.reproducible else PrivacyRandomness.secure()

    def _open_ledger(self, output_dir: str, checkpoint: str | None) -> None:
        """Start a new ledger, continue this trainer's own (a second ``train()``), or resume (never a reset)."""
        if checkpoint is None and self.ledger is not None:
            self.ledger.continue_in(output_dir)
            return
        ledger = PrivacyLedger(self.config.accountant, self.delta, self.ledger_info())
        if checkpoint is None:
            ledger.start(output_dir)
        else:
            ledger.resume(output_dir, checkpoint)
            if ledger.info["noise_multiplier"] != self.noise_multiplier:
                logger.info("Resuming: keeping the run's calibrated noise multiplier %.4g (this run's plan gives "
                            "%.4g).", ledger.info["noise_multiplier"], self.noise_multiplier)
                self.noise_multiplier = ledger.info["noise_multiplier"]
        self.ledger = ledger

    def _set_budget(self) -> None:
        """With a target ε: the step count at which it is spent (training stops there)."""
        target = self.config.target_epsilon
        self.budget_steps = None if target is None else self.ledger.steps_within(
            target, self.noise_multiplier, self.sample_rate, guess=self.planned_steps - self.ledger.steps)

    def write(self, directory: str) -> None:
        """``privacy_config.json`` and ``privacy_ledger.json`` (with ε) into ``directory``."""
        self.config.save_pretrained(directory)
        self.ledger.save(os.path.join(directory, LEDGER_NAME), with_epsilon=True)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
