"""``PrivateRun``: what ``make_private`` fixed for one private trainer, and the ledger it keeps.

The run holds the settings every private step uses (units, sampling rate, noise, clipper,
forward inputs) and connects the ledger to training: it opens it when ``train()`` starts
(new or resumed), records each step from the optimizer's step hook, and knows the step at
which a target ε is spent.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from memsinks.privacy.config import PrivacyConfig
from memsinks.privacy.grad_sample import PerUnitClipper
from memsinks.privacy.inputs import ForwardInputs
from memsinks.privacy.ledger import LEDGER_NAME, PrivacyLedger
from memsinks.privacy.sampling import PrivacyUnits

logger = logging.getLogger("memsinks")


@dataclass
class PrivateRun:
    """Everything the private trainer needs, fixed by ``make_private`` (σ possibly re-read on resume).

    Attributes:
        delta: the δ of the guarantee.
        sample_rate: q, the probability that a unit is in a step's batch.
        expected_batch_size: units per step on average (q x units); the noisy sum is divided by it.
        noise_multiplier: σ; the noise's standard deviation is σ x ``config.max_grad_norm``.
        ledger: the run's ledger, opened when ``train()`` starts.
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
    ledger: PrivacyLedger | None = None
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
            "sampling": "poisson",
        }

    def on_optimizer_step(self, optimizer) -> None:
        """Opacus's step hook: runs after the noise is added, before the parameters change."""
        self.ledger.record_step(optimizer.noise_multiplier, self.sample_rate)

    def open_ledger(self, output_dir: str, checkpoint: str | None) -> None:
        """Start a new ledger, or continue the one a resumed run left (never a reset)."""
        ledger = PrivacyLedger(self.config.accountant, self.delta, self.ledger_info())
        if checkpoint is None:
            ledger.start(output_dir)
        else:
            recorded = ledger.resume(output_dir, checkpoint).get("noise_multiplier")
            if self.config.target_epsilon is not None and recorded is not None and recorded != self.noise_multiplier:
                logger.info("Resuming: keeping the run's calibrated noise multiplier %.4g (a fresh calibration gives "
                            "%.4g).", recorded, self.noise_multiplier)
                self.noise_multiplier = float(recorded)
                ledger.info["noise_multiplier"] = self.noise_multiplier
                ledger.save(ledger.path)
        self.ledger = ledger

    def set_budget(self) -> None:
        """With a target ε: the step count at which it is spent (training stops there)."""
        target = self.config.target_epsilon
        self.budget_steps = None if target is None else self.ledger.steps_within(
            target, self.noise_multiplier, self.sample_rate, guess=self.planned_steps - self.ledger.steps)

    def write(self, directory: str) -> None:
        """``privacy_config.json`` and ``privacy_ledger.json`` (with ε) into ``directory``."""
        self.config.save_pretrained(directory)
        self.ledger.save(os.path.join(directory, LEDGER_NAME), with_epsilon=True)
