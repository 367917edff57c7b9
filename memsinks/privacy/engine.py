"""``make_private``: DP-SGD on a stock ``transformers.Trainer``, switched on by one call.

``trainer = memsinks.make_private(trainer, memsinks.PrivacyConfig(target_epsilon=8))`` checks
everything that can be checked before training, then returns the private trainer (see
``memsinks.privacy.trainer`` for what it changes and why it is a new object). As in
Opacus's ``PrivacyEngine.make_private``, the work is a short sequence of steps, each of
which may refuse with a message that says what to change:

1. ``_prepare_units``: the training set's columns and its privacy units;
2. ``_prepare_sampling``: expected batch, sampling rate, physical batch size, planned steps;
3. ``_prepare_noise``: δ and the noise multiplier (calibrated to a target ε);
4. ``_prepare_clipper``: the per-unit clipping hooks, checked against autograd;
5. ``_prepare_trainer``: the Trainer settings DP-SGD replaces, and the privacy callback.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from transformers import Trainer

from memsinks.model import unwrap_model
from memsinks.data import PRIVATE_MASK
from memsinks.privacy.accounting import calibrate_noise
from memsinks.privacy.config import PrivacyConfig
from memsinks.privacy.dataset import privacy_units, training_dataset
from memsinks.privacy.grad_sample import PerUnitClipper
from memsinks.privacy.inputs import ForwardInputs
from memsinks.privacy.run import PrivateRun
from memsinks.privacy.trainer import PrivacyCallback, PrivateTrainerMixin, private_trainer_class
from memsinks.privacy.validators import check_collator, check_model, check_per_unit_gradients, check_trainer

logger = logging.getLogger("memsinks")


def make_private(trainer: Trainer, config: PrivacyConfig) -> Trainer:
    """DP-SGD with Poisson sampling and honest accounting for a stock ``transformers.Trainer``.

    Everything that can be checked is checked here, before any training step: the config,
    the Trainer's settings, the model's layers (with a per-example gradient check on a
    synthetic batch), the collator, the batch size against the data, and that the target ε
    is reachable. Returns the private trainer, a new object of
    ``private_trainer_class(type(trainer))`` sharing ``trainer``'s model, arguments, data and
    callbacks; ``trainer`` itself can no longer train. Call ``.train()`` on the result.

    The Trainer's ``per_device_train_batch_size x gradient_accumulation_steps`` is the
    *expected* number of privacy units per optimizer step (Poisson sampling draws a random
    number around it); ``PrivacyConfig.physical_batch_size`` bounds the rows per pass.
    """
    if not isinstance(trainer, Trainer):
        raise TypeError(f"make_private expects a transformers.Trainer; got {type(trainer).__name__}.")
    if isinstance(trainer, PrivateTrainerMixin) or isinstance(trainer.train_dataset, _GivenToMakePrivate):
        raise ValueError("This trainer is already private (make_private was called on it before).")
    if not isinstance(config, PrivacyConfig):
        raise TypeError(f"make_private expects a memsinks.PrivacyConfig; got {type(config).__name__}.")
    cls = private_trainer_class(type(trainer))
    private = cls.__new__(cls)
    private.__dict__.update(trainer.__dict__)
    prepare(private, config)
    trainer.train_dataset = _GivenToMakePrivate()
    return private


def prepare(trainer: Trainer, config: PrivacyConfig) -> PrivateRun:
    """Make ``trainer`` (an instance of a private trainer class) ready for DP-SGD; sets ``trainer.privacy``."""
    if not isinstance(config, PrivacyConfig):
        raise TypeError(f"privacy_config must be a memsinks.PrivacyConfig; got {type(config).__name__}.")
    check_trainer(trainer)
    check_model(trainer.model)
    dataset, units = _prepare_units(trainer, config)
    sampling = _prepare_sampling(trainer.args, config, units)
    delta, sigma = _prepare_noise(config, units, sampling["sample_rate"], sampling["planned_steps"])
    inputs = ForwardInputs(unwrap_model(trainer.model))
    sample = [dataset[i] for i in units.rows_of(np.arange(min(2, units.num_units)))]
    check_collator(trainer.data_collator, sample, config.privacy_unit, inputs.takes_ids)
    clipper = _prepare_clipper(trainer.model, config, inputs)
    run = PrivateRun(config=config, clipper=clipper, units=units, dataset=dataset, delta=delta,
                     noise_multiplier=sigma, inputs=inputs, seed=trainer.args.seed, **sampling)
    run.randomness = run.new_randomness()  # a loader made before train() draws as training will (if reproducible)
    _prepare_trainer(trainer, run)
    return run


def _prepare_units(trainer: Trainer, config: PrivacyConfig):
    dataset = training_dataset(trainer)
    if PRIVATE_MASK in (getattr(dataset, "column_names", None) or ()):
        raise ValueError(
            f"The training set has a '{PRIVATE_MASK}' column (memsinks.mark_private_spans): routing marked tokens "
            "into the sinks takes a second backward pass that per-example clipping does not see, so DP-SGD's "
            f"guarantee would not cover it. Remove the column (dataset.remove_columns('{PRIVATE_MASK}')) to train "
            "with DP-SGD, or train without make_private to use marked spans.")
    return dataset, privacy_units(dataset, config.privacy_unit)


def _prepare_sampling(args, config: PrivacyConfig, units) -> dict:
    """Expected batch (units per step, all processes), physical batch (rows per pass), sampling rate and steps."""
    expected = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    physical = config.physical_batch_size or args.per_device_train_batch_size
    what = "examples" if config.privacy_unit == "example" else "distinct sequence IDs"
    if units.num_units <= expected:
        raise ValueError(
            f"The expected batch ({expected} = per_device_train_batch_size x gradient_accumulation_steps x "
            f"{args.world_size} process(es)) is not "
            f"smaller than the {units.num_units} {what} in the training set: every unit would be in every batch "
            "(sampling rate 1). Use a smaller batch or more data.")
    largest = int(units.sizes.max())
    if largest > physical:
        raise ValueError(
            f"One privacy unit has {largest} rows but physical_batch_size is {physical}: a unit's rows must fit in "
            f"one pass to be clipped together. Set PrivacyConfig(physical_batch_size>={largest}), or cap the rows "
            "per ID in the data.")
    steps_per_epoch = max(1, round(units.num_units / expected))
    planned = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    return {"expected_batch_size": expected, "physical_batch_size": physical,
            "sample_rate": expected / units.num_units, "steps_per_epoch": steps_per_epoch, "planned_steps": planned}


def default_delta(num_units: int) -> float:
    """δ when none is given: 0.01 / N for N privacy units.

    The mechanism that publishes each unit's data outright with probability δ is (0, δ)-DP and
    exposes δ N units on average, which is why δ must be well below 1 / N (Dwork & Roth 2014,
    "The Algorithmic Foundations of Differential Privacy", section 2.3). At 0.01 / N that
    mechanism exposes nobody with probability 99%, whatever N is; rules such as 1 / N^1.1 or
    1 / (N ln N) leave δ N close to 1 for the few hundred users of a user-level fine-tune.
    """
    return 0.01 / num_units


def _prepare_noise(config: PrivacyConfig, units, sample_rate: float, planned: int) -> tuple[float, float]:
    """δ (given, or ``default_delta``) and σ (given, or calibrated to the target ε over the planned steps)."""
    n = units.num_units
    delta = config.delta if config.delta is not None else default_delta(n)
    if delta >= 1.0 / n:
        if not config.allow_large_delta:
            raise ValueError(
                f"delta={delta:.3g} is not below 1 / (number of units) = 1/{n}: a mechanism that publishes one unit's "
                f"data outright would meet it. Leave delta unset for the default 0.01/N = {default_delta(n):.3g}, or "
                "set PrivacyConfig(allow_large_delta=True) if you really mean it.")
        logger.warning("delta=%.3g is not below 1/(number of units)=%.3g: a mechanism that publishes one unit's data "
                       "outright would meet it (allow_large_delta=True).", delta, 1.0 / n)
    if config.noise_multiplier is not None:
        return delta, config.noise_multiplier
    return delta, calibrate_noise(config.target_epsilon, delta, sample_rate, planned, config.accountant)


def _prepare_clipper(model, config: PrivacyConfig, inputs: ForwardInputs) -> PerUnitClipper:
    """The clipping hooks, checked on a synthetic batch; retried with per-row position_ids if the default broadcasts."""
    clipper = PerUnitClipper(model, config.max_grad_norm, config.clipping)
    vocab = unwrap_model(model).get_input_embeddings().weight.shape[0]
    try:
        try:
            check_per_unit_gradients(model, clipper, inputs, vocab)
        except RuntimeError as err:
            if "broadcast over the batch" not in str(err) or inputs.position_ids:
                raise
            inputs.position_ids = True
            check_per_unit_gradients(model, clipper, inputs, vocab)
    except Exception:
        clipper.close()
        raise
    return clipper


def _prepare_trainer(trainer: Trainer, run: PrivateRun) -> None:
    """Switch off what DP-SGD replaces (gradient clipping and accumulation) and add the privacy callback."""
    args = trainer.args
    if args.max_grad_norm and args.max_grad_norm > 0:
        logger.info("make_private: TrainingArguments.max_grad_norm=%s set to 0 (DP clips per unit instead).",
                    args.max_grad_norm)
    args.max_grad_norm = 0.0
    args.gradient_accumulation_steps = 1
    trainer.accelerator.gradient_accumulation_steps = 1
    trainer.privacy = run
    trainer.add_callback(PrivacyCallback(run))


class _GivenToMakePrivate:
    """Stands in for the training set of a trainer passed to ``make_private``: training it must fail loudly."""

    MESSAGE = ("This Trainer was passed to memsinks.make_private, which returned a private trainer sharing its model "
               "and data; train that one (trainer = memsinks.make_private(trainer, config)). Training this object "
               "would not be private.")

    def __len__(self):
        raise RuntimeError(self.MESSAGE)

    def __getitem__(self, index):
        raise RuntimeError(self.MESSAGE)

    def __iter__(self):
        raise RuntimeError(self.MESSAGE)
