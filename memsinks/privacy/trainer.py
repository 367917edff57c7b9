"""``make_private``: DP-SGD on a stock ``transformers.Trainer``, switched on by one call.

``trainer = memsinks.make_private(trainer, memsinks.PrivacyConfig(target_epsilon=8))`` checks
everything that can be checked before training, then gives the trainer instance a subclass
of its own class (so user subclasses keep their behaviour) that changes five things:

- the training data loader: Poisson sampling of privacy units (``sampling``), one logical
  batch per optimizer step, cut into physical batches;
- the training step: per-row causal-LM losses, one backward per physical batch with the
  per-unit clipping hooks on (``grad_sample``), clipped sums accumulated; the Trainer's own
  gradient accumulation is set to 1 (the logical batch *is* the accumulation) and its loss
  scaling and gradient clipping (``max_grad_norm``) are off, so nothing is counted twice;
- the optimizer: wrapped by Opacus (``optimizer``), which adds the noise; its step hook
  writes the ledger before the update;
- logging: ``privacy/epsilon`` (and ``privacy/delta``) in every log entry; the Trainer's
  ``grad_norm``, a statistic of the un-noised gradient, is not logged;
- saving: ``privacy_config.json`` and ``privacy_ledger.json`` (with the ε so far) into the
  output folder and every checkpoint; ``train(resume_from_checkpoint=...)`` continues the
  ledger, and training stops when the target ε is spent.

The model itself is not wrapped: ``generate()``, evaluation and saving see the plain model.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from memsinks.data import SEQUENCE_IDS
from memsinks.model import has_sinks, unwrap_model
from memsinks.privacy.config import PrivacyConfig
from memsinks.privacy.grad_sample import PerUnitClipper
from memsinks.privacy.ledger import LEDGER_NAME, PrivacyLedger, calibrate_noise, steps_within_budget
from memsinks.privacy.loss import causal_lm_row_losses
from memsinks.privacy.optimizer import PrivateOptimizer
from memsinks.privacy.sampling import PHYSICAL_BATCHES, PrivacyUnits, PrivateDataLoader
from memsinks.privacy.validators import check_collator, check_model, check_per_unit_gradients, check_trainer

logger = logging.getLogger("memsinks")

_LABEL_COLUMNS = ("labels", "label", "label_ids")
#: what a resumed run must share with the ledger it continues, or ε would mean something else
_LEDGER_IDENTITY = ("privacy_unit", "num_units")


@dataclass
class _PrivateRun:
    """Everything the private trainer needs, fixed by ``make_private`` (σ possibly re-read on resume)."""

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
    takes_ids: bool
    accepted_inputs: set | None
    position_ids: bool = False
    ledger: PrivacyLedger | None = None
    budget_steps: int | None = None
    stop_logged: bool = field(default=False)

    # ------------------------------------------------------------ batches
    def model_inputs(self, batch: dict) -> dict:
        """The forward's kwargs for a collated batch: no labels, IDs only if the model takes them,
        per-row position_ids where a broadcast (1, T) default would hide per-row gradients."""
        kwargs = {k: v for k, v in batch.items() if k not in _LABEL_COLUMNS and k != SEQUENCE_IDS}
        if self.accepted_inputs is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in self.accepted_inputs}
        if self.takes_ids and SEQUENCE_IDS in batch:
            kwargs[SEQUENCE_IDS] = batch[SEQUENCE_IDS]
        if self.position_ids and "position_ids" not in kwargs:
            rows, length = batch["input_ids"].shape[:2]
            kwargs["position_ids"] = torch.arange(length, device=batch["input_ids"].device).expand(rows, length)
        if self.accepted_inputs is None or "use_cache" in self.accepted_inputs:
            kwargs["use_cache"] = False
        return kwargs

    def units_of(self, batch: dict) -> tuple[torch.Tensor, int]:
        """(B,) unit index of each row and the number of units in a physical batch."""
        rows = batch["input_ids"].shape[0]
        device = batch["input_ids"].device
        if self.config.privacy_unit == "example":
            return torch.arange(rows, device=device), rows
        ids = batch.get(SEQUENCE_IDS)
        if ids is None:
            raise ValueError(f"A training batch has no '{SEQUENCE_IDS}' (privacy_unit='sequence_id').")
        ids = torch.as_tensor(ids, device=device)
        if ids.dim() == 2:
            row_ids = ids.max(dim=1).values
            if not bool(((ids == row_ids[:, None]) | (ids == 0)).all()):
                raise ValueError("A row holds tokens of several sequence IDs; user-level DP needs one ID per row.")
            ids = row_ids
        _, index = torch.unique(ids, return_inverse=True)
        return index, int(index.max()) + 1 if index.numel() else 0

    # ------------------------------------------------------------ ledger
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

    def on_optimizer_step(self, optimizer: PrivateOptimizer) -> None:
        """Opacus's step hook: runs after the noise is added, before the parameters change."""
        self.ledger.record_step(optimizer.noise_multiplier, self.sample_rate)

    def open_ledger(self, output_dir: str, checkpoint: str | None) -> None:
        """Start a new ledger, or continue the one a resumed run left (never a reset)."""
        path = os.path.join(output_dir, LEDGER_NAME)
        existing = PrivacyLedger.load(path, path) if os.path.isfile(path) else None
        if checkpoint is None:
            if existing is not None and existing.steps > 0:
                raise ValueError(
                    f"{path} records {existing.steps} private steps of an earlier run (ε={existing.epsilon():.3g}) "
                    "on this output_dir. Starting afresh would reset ε. Resume that run with "
                    "trainer.train(resume_from_checkpoint=True), or, to start a new run with its own accounting, "
                    "use another output_dir (or delete that file knowing the earlier spending still counts)."
                )
            self.ledger = PrivacyLedger(path, self.config.accountant, self.delta, self.ledger_info())
        else:
            saved_path = os.path.join(checkpoint, LEDGER_NAME)
            if not os.path.isfile(saved_path):
                raise ValueError(
                    f"Checkpoint {checkpoint} has no {LEDGER_NAME}: it was not saved by a private run, so its "
                    "privacy spending is unknown. Resume private training only from checkpoints of a private run."
                )
            saved = PrivacyLedger.load(saved_path, path)
            ledger = saved
            if existing is not None and _extends(existing.history, saved.history):
                ledger = existing
                if existing.steps > saved.steps:
                    logger.warning(
                        "The run resumed from %s had taken %d more private steps after that checkpoint before it "
                        "stopped; they stay counted in ε (%d steps in all).", checkpoint, existing.steps - saved.steps,
                        existing.steps)
            elif existing is not None:
                raise ValueError(f"{path} and {saved_path} record different runs; resume into the run's own output_dir.")
            self._adopt(ledger)
        self.ledger.save(path)

    def _adopt(self, ledger: PrivacyLedger) -> None:
        """Continue ``ledger``: same meaning of ε required; the run's calibrated noise is kept."""
        differences = [f"{key}: ledger {ledger.info.get(key)!r}, now {self.ledger_info()[key]!r}"
                       for key in _LEDGER_IDENTITY if ledger.info.get(key) != self.ledger_info()[key]]
        if ledger.accountant != self.config.accountant:
            differences.append(f"accountant: ledger {ledger.accountant!r}, now {self.config.accountant!r}")
        if not math.isclose(ledger.delta, self.delta, rel_tol=1e-12):
            differences.append(f"delta: ledger {ledger.delta!r}, now {self.delta!r}")
        if differences:
            raise ValueError("The resumed run's privacy settings differ from the ledger it continues ("
                             + "; ".join(differences) + "). Resume with the same data and PrivacyConfig.")
        recorded = ledger.info.get("noise_multiplier")
        if self.config.target_epsilon is not None and recorded is not None and recorded != self.noise_multiplier:
            logger.info("Resuming: keeping the run's calibrated noise multiplier %.4g (a fresh calibration gives %.4g).",
                        recorded, self.noise_multiplier)
            self.noise_multiplier = float(recorded)
        ledger.info.update(self.ledger_info())
        self.ledger = ledger

    def set_budget(self) -> None:
        """With a target ε: the step count at which it is spent (training stops there)."""
        target = self.config.target_epsilon
        if target is None:
            self.budget_steps = None
            return
        more = steps_within_budget(self.config.accountant, self.ledger.history, self.noise_multiplier,
                                   self.sample_rate, self.delta, target, guess=self.planned_steps - self.ledger.steps)
        if more == 0:
            raise ValueError(
                f"The privacy budget is spent: {self.ledger.steps} steps so far give ε={self.ledger.epsilon():.4g} "
                f"and one more step would exceed target_epsilon={target}. There is nothing left to train on.")
        self.budget_steps = self.ledger.steps + more

    def write(self, directory: str) -> None:
        """``privacy_config.json`` and ``privacy_ledger.json`` (with ε) into ``directory``."""
        self.config.save_pretrained(directory)
        self.ledger.save(os.path.join(directory, LEDGER_NAME), with_epsilon=True)


def _extends(longer: list, shorter: list) -> bool:
    """Whether history ``longer`` begins with history ``shorter``."""
    if len(shorter) > len(longer):
        return False
    for i, seg in enumerate(shorter):
        other = longer[i]
        if tuple(seg[:2]) != tuple(other[:2]):
            return False
        if i < len(shorter) - 1 and seg[2] != other[2]:
            return False
        if i == len(shorter) - 1 and other[2] < seg[2]:
            return False
    return True


class _PrivacyCallback(TrainerCallback):
    """Stops training when the target ε is spent; writes the final ledger when training ends."""

    def __init__(self, run: _PrivateRun):
        self.run = run

    def on_step_end(self, args, state, control, **kwargs):
        run = self.run
        if run.budget_steps is not None and run.ledger.steps >= run.budget_steps:
            control.should_training_stop = True
            if not run.stop_logged:
                logger.warning("Privacy budget spent: ε=%.4g at δ=%.3g after %d steps (target_epsilon=%s); "
                               "stopping training.", run.ledger.epsilon(), run.delta, run.ledger.steps,
                               run.config.target_epsilon)
                run.stop_logged = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if args.should_save:
            self.run.write(args.output_dir)
        return control


class _PrivateTrainerMixin:
    """The methods ``make_private`` changes; see the module docstring."""

    _memsinks_privacy: _PrivateRun

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None,
              **kwargs):
        from transformers.trainer_utils import get_last_checkpoint

        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        if resume_from_checkpoint is False:
            resume_from_checkpoint = None
        run = self._memsinks_privacy
        run.open_ledger(self.args.output_dir, resume_from_checkpoint)
        run.set_budget()
        run.stop_logged = False
        if isinstance(self.optimizer, PrivateOptimizer):
            self.optimizer.noise_multiplier = run.noise_multiplier
        logger.info(
            "DP training: %s-level, sampling rate %.4g (expected %d units per step of %d), noise multiplier %.4g, "
            "C=%g, δ=%.3g, %s accountant; %d steps taken so far%s.", run.config.privacy_unit, run.sample_rate,
            run.expected_batch_size, run.units.num_units, run.noise_multiplier, run.config.max_grad_norm, run.delta,
            run.config.accountant, run.ledger.steps,
            "" if run.budget_steps is None else f", budget allows {run.budget_steps} in all")
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

    def get_train_dataloader(self):
        run = self._memsinks_privacy
        args = self.args
        return PrivateDataLoader(
            run.dataset, self.data_collator, run.units, run.sample_rate, run.steps_per_epoch,
            run.physical_batch_size, seed=args.seed, num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory and torch.cuda.is_available(),
        )

    def create_optimizer(self, model=None):
        super().create_optimizer(model)
        run = self._memsinks_privacy
        if not isinstance(self.optimizer, PrivateOptimizer):
            optimized = {id(p) for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad}
            clipped = {id(p) for p in run.clipper.params}
            if optimized != clipped:
                raise ValueError(
                    f"The optimizer updates {len(optimized)} trainable tensors but {len(clipped)} get per-example "
                    "clipping; change requires_grad before make_private, not after.")
            self.optimizer = PrivateOptimizer(self.optimizer, noise_multiplier=run.noise_multiplier,
                                              max_grad_norm=run.config.max_grad_norm,
                                              expected_batch_size=run.expected_batch_size)
            self.optimizer.attach_step_hook(run.on_optimizer_step)
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        """One logical batch: per physical batch, per-row losses -> backward with hooks -> clip and sum."""
        run = self._memsinks_privacy
        model.train()
        total = torch.zeros((), device=self.args.device)
        units_seen = 0
        for piece in inputs[PHYSICAL_BATCHES]:
            piece = self._prepare_inputs(piece)
            index, units = run.units_of(piece)
            weights = 1.0 / torch.bincount(index, minlength=units).to(torch.float32)[index]
            with run.clipper.capture(index, units):
                with self.compute_loss_context_manager():
                    logits = model(**run.model_inputs(piece)).logits
                loss_sum = (causal_lm_row_losses(logits, piece["labels"]) * weights).sum()
                if loss_sum.requires_grad:
                    loss_sum.backward()
                del logits
            run.clipper.clip_and_accumulate()
            total = total + loss_sum.detach().to(total.device)
            units_seen += units
        if units_seen != inputs["num_units"]:
            raise ValueError(
                f"The sampler drew {inputs['num_units']} privacy units but the collated batches hold {units_seen}: the "
                "data collator changes rows or IDs. Use a collator that keeps one row per example and its "
                f"'{SEQUENCE_IDS}'.")
        return total / max(units_seen, 1)

    def log(self, logs: dict, *args, **kwargs) -> None:
        run = self._memsinks_privacy
        if run.ledger is not None:
            logs["privacy/epsilon"] = run.ledger.epsilon()
            logs["privacy/delta"] = run.delta
        super().log(logs, *args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.args.should_save and self._memsinks_privacy.ledger is not None:
            self._memsinks_privacy.write(output_dir or self.args.output_dir)

    def _get_grad_norm(self, model, grad_norm=None):
        return None  # the norm of the un-noised clipped sum is not private; see the module docstring

    def floating_point_ops(self, inputs: dict) -> int:
        return sum(super(_PrivateTrainerMixin, self).floating_point_ops(p) for p in inputs[PHYSICAL_BATCHES])

    def _track_num_input_tokens(self, inputs) -> None:
        for piece in inputs[PHYSICAL_BATCHES]:
            super()._track_num_input_tokens(piece)


_PRIVATE_CLASSES: dict[type, type] = {}


def _private_class(cls: type) -> type:
    if cls not in _PRIVATE_CLASSES:
        _PRIVATE_CLASSES[cls] = type(f"Private{cls.__name__}", (_PrivateTrainerMixin, cls), {"__module__": cls.__module__})
    return _PRIVATE_CLASSES[cls]


def _forward_parameters(model) -> tuple[set | None, bool]:
    """(names the forward accepts, or None if it takes **kwargs; whether it takes sequence_ids)."""
    forward = model.forward
    params = inspect.signature(forward).parameters
    takes_ids = SEQUENCE_IDS in params or has_sinks(model)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None, takes_ids
    return set(params), takes_ids


def _training_dataset(trainer):
    """The training set with the columns the stock Trainer would drop removed, keeping the ID column."""
    dataset = trainer.train_dataset
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        return dataset
    if not (trainer.args.remove_unused_columns and isinstance(dataset, datasets.Dataset)):
        return dataset
    inner = unwrap_model(trainer.model)
    keep = set(inspect.signature(inner.forward).parameters) | set(_LABEL_COLUMNS)
    keep |= set(trainer.args.label_names or []) | {SEQUENCE_IDS}  # the private step removes IDs the forward does not take
    drop = [c for c in dataset.column_names if c not in keep]
    return dataset.remove_columns(drop) if drop else dataset


def _row_ids(dataset) -> np.ndarray:
    """The ``sequence_ids`` value of every row (one per row; per-token lists must hold one ID)."""
    try:
        import datasets

        if isinstance(dataset, datasets.Dataset):
            if SEQUENCE_IDS not in dataset.column_names:
                raise KeyError(SEQUENCE_IDS)
            values = dataset.with_format(None)[SEQUENCE_IDS]
        else:
            values = [dataset[i][SEQUENCE_IDS] for i in range(len(dataset))]
    except KeyError:
        raise ValueError(
            f"privacy_unit='sequence_id' needs a '{SEQUENCE_IDS}' column naming each row's user or document: "
            "memsinks.assign_sequence_ids(dataset, from_column='user_id') adds it.") from None
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if isinstance(v, (list, tuple, np.ndarray, torch.Tensor)):
            distinct = {int(x) for x in v} - {0}
            if len(distinct) != 1:
                raise ValueError(f"Row {i} has per-token sequence IDs {sorted(distinct)[:5]}; user-level DP needs "
                                 "exactly one ID per row.")
            v = distinct.pop()
        out[i] = int(v)
    return out


def make_private(trainer: Trainer, config: PrivacyConfig) -> Trainer:
    """Switch a stock ``transformers.Trainer`` to DP-SGD with Poisson sampling and honest accounting.

    Everything that can be checked is checked here, before any training step: the config,
    the Trainer's settings, the model's layers (with a per-example gradient check on a
    synthetic batch), the collator, the batch size against the data, and that the target ε
    is reachable. Returns the same trainer object, now private; call ``trainer.train()``.

    The Trainer's ``per_device_train_batch_size x gradient_accumulation_steps`` is the
    *expected* number of privacy units per optimizer step (Poisson sampling draws a random
    number around it); ``PrivacyConfig.physical_batch_size`` bounds the rows per pass.
    """
    if not isinstance(trainer, Trainer):
        raise TypeError(f"make_private expects a transformers.Trainer; got {type(trainer).__name__}.")
    if isinstance(trainer, _PrivateTrainerMixin):
        raise ValueError("This trainer is already private (make_private was called on it before).")
    if not isinstance(config, PrivacyConfig):
        raise TypeError(f"make_private expects a memsinks.PrivacyConfig; got {type(config).__name__}.")
    check_trainer(trainer)
    model = trainer.model
    check_model(model)
    args = trainer.args

    dataset = _training_dataset(trainer)
    n_rows = len(dataset)
    if config.privacy_unit == "sequence_id":
        units = PrivacyUnits.from_ids(_row_ids(dataset))
    else:
        units = PrivacyUnits.per_example(n_rows)
        _warn_on_repeated_ids(dataset)
    expected = args.per_device_train_batch_size * args.gradient_accumulation_steps
    physical = config.physical_batch_size or args.per_device_train_batch_size
    what = "examples" if config.privacy_unit == "example" else "distinct sequence IDs"
    if units.num_units <= expected:
        raise ValueError(
            f"The expected batch ({expected} = per_device_train_batch_size x gradient_accumulation_steps) is not "
            f"smaller than the {units.num_units} {what} in the training set: every unit would be in every batch "
            "(sampling rate 1). Use a smaller batch or more data.")
    largest = int(units.sizes.max())
    if largest > physical:
        raise ValueError(
            f"One privacy unit has {largest} rows but physical_batch_size is {physical}: a unit's rows must fit in "
            f"one pass to be clipped together. Set PrivacyConfig(physical_batch_size>={largest}), or cap the rows "
            "per ID in the data.")
    sample_rate = expected / units.num_units
    steps_per_epoch = max(1, round(units.num_units / expected))
    planned = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
    delta = config.delta if config.delta is not None else 1.0 / units.num_units
    if config.delta is not None and config.delta > 1.0 / units.num_units:
        logger.warning("delta=%.3g is above 1/(number of units)=%.3g: a mechanism that publishes one unit's data "
                       "outright would meet it. Prefer delta < 1/N.", config.delta, 1.0 / units.num_units)
    if config.noise_multiplier is not None:
        sigma = config.noise_multiplier
    else:
        sigma = calibrate_noise(config.target_epsilon, delta, sample_rate, planned, config.accountant)

    accepted, takes_ids = _forward_parameters(unwrap_model(model))
    takes_ids = takes_ids or (accepted is not None and SEQUENCE_IDS in accepted)
    sample = [dataset[i] for i in units.rows_of(np.arange(min(2, units.num_units)))]
    check_collator(trainer.data_collator, sample, config.privacy_unit, takes_ids)

    clipper = PerUnitClipper(model, config.max_grad_norm, config.clipping)
    run = _PrivateRun(
        config=config, clipper=clipper, units=units, dataset=dataset, delta=delta, sample_rate=sample_rate,
        expected_batch_size=expected, physical_batch_size=physical, steps_per_epoch=steps_per_epoch,
        planned_steps=planned, noise_multiplier=sigma, takes_ids=takes_ids, accepted_inputs=accepted,
    )
    vocab = unwrap_model(model).get_input_embeddings().num_embeddings
    try:
        _check_gradients(model, clipper, run, vocab)
    except Exception:
        clipper.close()
        raise

    if args.max_grad_norm and args.max_grad_norm > 0:
        logger.info("make_private: TrainingArguments.max_grad_norm=%s set to 0 (DP clips per unit instead).",
                    args.max_grad_norm)
    args.max_grad_norm = 0.0
    args.gradient_accumulation_steps = 1
    trainer.accelerator.gradient_accumulation_steps = 1
    trainer._memsinks_privacy = run
    trainer.__class__ = _private_class(type(trainer))
    trainer.add_callback(_PrivacyCallback(run))
    return trainer


def _check_gradients(model, clipper: PerUnitClipper, run: _PrivateRun, vocab: int) -> None:
    """The synthetic per-example gradient check; retried with per-row position_ids if the default broadcasts."""
    try:
        check_per_unit_gradients(model, clipper, run.model_inputs, vocab)
    except RuntimeError as err:
        if "broadcast over the batch" not in str(err) or run.position_ids:
            raise
        run.position_ids = True
        check_per_unit_gradients(model, clipper, run.model_inputs, vocab)


def _warn_on_repeated_ids(dataset) -> None:
    try:
        import datasets

        if isinstance(dataset, datasets.Dataset) and SEQUENCE_IDS in dataset.column_names:
            ids = dataset.with_format(None)[SEQUENCE_IDS]
            if ids and not isinstance(ids[0], (list, tuple)):
                repeated = len(ids) - len(set(ids))
                if repeated:
                    logger.warning(
                        "%d training rows repeat another row's sequence ID. Example-level DP bounds what each row "
                        "reveals, not what a text repeated k times reveals (about k times ε); "
                        "privacy_unit='sequence_id' protects each ID as one unit.", repeated)
    except ImportError:  # pragma: no cover
        pass
