"""``PrivateTrainer``: the stock ``transformers.Trainer`` with DP-SGD's data loader, step, optimizer and logging.

The class is published by name so that what a private run is can be read and imported:
``memsinks.privacy.PrivateTrainer(..., privacy_config=PrivacyConfig(...))`` builds one
directly, and ``class MyPrivateTrainer(PrivateTrainerMixin, MyTrainer)`` makes a user's own
Trainer subclass private with its overrides intact (the mixin comes first in the MRO and
calls ``super()`` everywhere). ``memsinks.make_private(trainer, config)`` does the same for
an existing trainer and returns a *new* object of ``private_trainer_class(type(trainer))``
holding the same model, arguments and callbacks; the object passed in is left unable to
train (its ``train()`` raises and says to use the returned one), so a script that ignores
the return value fails loudly instead of training without privacy. It is not turned into the
private class in place: an object whose type changes behind the caller's back breaks what
the caller knows about it, and a new object built by re-running a subclass's ``__init__``
is impossible in general (its arguments are unknown).

What changes against the stock Trainer:

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

import logging

import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import Trainer, TrainerCallback

from memsinks.data import SEQUENCE_IDS
from memsinks.model import sink_warmup
from memsinks.privacy.inputs import units_of
from memsinks.privacy.loss import causal_lm_row_losses
from memsinks.privacy.optimizer import PrivateOptimizer
from memsinks.privacy.run import PrivateRun
from memsinks.privacy.sampling import PHYSICAL_BATCHES, PrivateDataLoader

logger = logging.getLogger("memsinks")


class PrivacyCallback(TrainerCallback):
    """Stops training when the target ε is spent; writes the final ledger when training ends."""

    def __init__(self, run: PrivateRun):
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


class PrivateTrainerMixin:
    """The Trainer methods DP-SGD changes; put it before a ``Trainer`` subclass in the bases.

    Attributes:
        privacy: the ``PrivateRun`` (units, sampling rate, δ, σ, ledger) ``make_private`` fixed.
    """

    privacy: PrivateRun

    def __init__(self, *args, privacy_config, **kwargs):
        from memsinks.privacy.engine import prepare

        super().__init__(*args, **kwargs)
        prepare(self, privacy_config)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None,
              **kwargs):
        from transformers.trainer_utils import get_last_checkpoint

        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        if resume_from_checkpoint is False:
            resume_from_checkpoint = None
        run = self.privacy
        run.begin_training(self.args.output_dir, resume_from_checkpoint, is_main=self.args.process_index == 0)
        if run.config.reproducible:
            logger.warning("PrivacyConfig(reproducible=True): sampling and noise are derived from "
                           "TrainingArguments.seed=%d, so anyone who knows the seed knows them; the run is not "
                           "private. Use it for debugging only.", run.seed)
        optimizer = _private_optimizer_in(self.optimizer)
        if optimizer is not None:  # a second train() of this trainer: the same optimizer, this run's settings
            optimizer.noise_multiplier, optimizer.randomness = run.noise_multiplier, run.randomness
        logger.info(
            "DP training: %s-level, sampling rate %.4g (expected %d units per step of %d), noise multiplier %.4g, "
            "C=%g, δ=%.3g, %s accountant; %d steps taken so far%s.", run.config.privacy_unit, run.sample_rate,
            run.expected_batch_size, run.units.num_units, run.noise_multiplier, run.config.max_grad_norm, run.delta,
            run.config.accountant, run.ledger.steps,
            "" if run.budget_steps is None else f", budget allows {run.budget_steps} in all")
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

    def get_train_dataloader(self):
        run = self.privacy
        args = self.args
        return PrivateDataLoader(
            run.dataset, self.data_collator, run.units, run.sample_rate, run.steps_per_epoch,
            run.physical_batch_size, run.randomness, rank=args.process_index, world_size=args.world_size,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory and torch.cuda.is_available(),
        )

    def create_optimizer(self, model=None):
        existing = _private_optimizer_in(self.optimizer)
        if existing is not None:  # a second train(): unwrap what accelerate wrapped, never wrap twice
            self.optimizer = existing
            existing.clear()
            return existing
        super().create_optimizer(model)
        run = self.privacy
        optimized = {id(p) for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad}
        clipped = {id(p) for p in run.clipper.params}
        if optimized != clipped:
            raise ValueError(
                f"The optimizer updates {len(optimized)} trainable tensors but {len(clipped)} get per-example "
                "clipping; change requires_grad before make_private, not after.")
        self.optimizer = PrivateOptimizer(self.optimizer, noise_multiplier=run.noise_multiplier,
                                          max_grad_norm=run.config.max_grad_norm,
                                          expected_batch_size=run.expected_batch_size, randomness=run.randomness,
                                          step_index=lambda: run.ledger.steps)
        self.optimizer.attach_step_hook(run.on_optimizer_step)
        warmup = sink_warmup(self.model)
        if warmup is not None:  # after the noise, before the update: post-processing, so the guarantee holds
            self.optimizer.original_optimizer.register_step_pre_hook(lambda *_: warmup.zero_shared_grads())
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        """One logical batch: per physical batch, per-row losses -> backward with hooks -> clip and sum."""
        run = self.privacy
        model.train()
        # under DDP, around the wrapper: its gradient hooks never fire (the parameters do not require grad while
        # the clipper records) and the clipped sums are added up across ranks by the optimizer instead
        forward = model.module if isinstance(model, DistributedDataParallel) else model
        total = torch.zeros((), device=self.args.device)
        units_seen = 0
        for piece in inputs[PHYSICAL_BATCHES]:
            piece = self._prepare_inputs(piece)
            index, units = units_of(piece, run.config.privacy_unit)
            weights = 1.0 / torch.bincount(index, minlength=units).to(torch.float32)[index]
            with run.clipper.capture(index, units):
                with self.compute_loss_context_manager():
                    logits = forward(**run.inputs(piece)).logits
                loss_sum = (causal_lm_row_losses(logits, run.inputs.labels(piece)) * weights).sum()
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
        run = self.privacy
        if run.ledger is not None:
            logs["privacy/epsilon"] = run.ledger.epsilon()
            logs["privacy/delta"] = run.delta
        super().log(logs, *args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.args.should_save and self.privacy.ledger is not None:
            self.privacy.write(output_dir or self.args.output_dir)

    def _get_grad_norm(self, model, grad_norm=None):
        # private Trainer method overridden: its norm of the un-noised clipped sum is not private, so nothing is logged
        return None

    def floating_point_ops(self, inputs: dict) -> int:
        return sum(super(PrivateTrainerMixin, self).floating_point_ops(p) for p in inputs[PHYSICAL_BATCHES])

    def _track_num_input_tokens(self, inputs) -> None:
        # private Trainer method overridden: a logical batch holds physical batches (as many as this rank's share
        # needs); they are counted together, so every rank makes the one gather the stock method makes
        pieces = inputs[PHYSICAL_BATCHES]
        main = getattr(self.model, "main_input_name", "input_ids")
        flat = {main: torch.cat([p[main].reshape(-1) for p in pieces]) if pieces else torch.zeros(0, dtype=torch.long)}
        if pieces and all("attention_mask" in p for p in pieces):
            flat["attention_mask"] = torch.cat([p["attention_mask"].reshape(-1) for p in pieces])
        super()._track_num_input_tokens(flat)


def _private_optimizer_in(optimizer) -> PrivateOptimizer | None:
    """The ``PrivateOptimizer`` inside accelerate's wrappers, if the trainer has made one."""
    while optimizer is not None and not isinstance(optimizer, PrivateOptimizer):
        optimizer = getattr(optimizer, "optimizer", None)
    return optimizer


class PrivateTrainer(PrivateTrainerMixin, Trainer):
    """The stock ``transformers.Trainer`` trained with DP-SGD; takes ``privacy_config=PrivacyConfig(...)``."""


_PRIVATE_CLASSES: dict[type, type] = {Trainer: PrivateTrainer}


def private_trainer_class(cls: type) -> type:
    """The private class of a Trainer class: ``PrivateTrainer`` for ``Trainer``, else ``Private<Name>``
    (``PrivateTrainerMixin`` before ``cls``), made once per class."""
    if issubclass(cls, PrivateTrainerMixin):
        return cls
    if cls not in _PRIVATE_CLASSES:
        _PRIVATE_CLASSES[cls] = type(f"Private{cls.__name__}", (PrivateTrainerMixin, cls),
                                     {"__module__": __name__, "__doc__": f"{cls.__name__} trained with DP-SGD."})
    return _PRIVATE_CLASSES[cls]
