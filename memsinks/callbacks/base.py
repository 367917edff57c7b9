"""What every memorization callback shares: when to probe, and how the numbers reach the Trainer's log.

Metrics are logged with ``Trainer.log``, the path the Trainer's own loss takes: the entry lands
in ``state.log_history`` and every ``report_to`` integration receives it through ``on_log``
(each writes from the main process only). A value put into the ``metrics`` dict of
``on_evaluate`` or into ``logs`` of ``on_log`` would miss both, because the Trainer has
already copied the entry into ``log_history`` and called the integrations by then.

A ``TrainerCallback`` is not given the Trainer, so the callback finds it on the call stack
of the event that invoked it (the Trainer whose ``state`` is the one the event carries), or
is told with ``set_trainer(trainer)``, the name transformers' own trainer-aware callbacks use.

Every rank runs the probes on its share of the examples and gathers the rest, so every rank
logs the same numbers (keeping ``log_history`` identical across ranks, as the Trainer's own
logging does) and every rank takes the same decision when an alert stops training.
"""

from __future__ import annotations

import inspect
import logging
import math

import torch
from transformers import TrainerCallback

from memsinks.unwrap import unwrap_model

logger = logging.getLogger("memsinks")

METRIC_PREFIX = "memorization/"


def find_trainer(state):
    """The ``Trainer`` on the call stack whose ``state`` is ``state`` (the one running the current event), or None."""
    from transformers import Trainer

    frame = inspect.currentframe()
    try:
        for _ in range(20):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                break
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, Trainer) and candidate.state is state:
                return candidate
    finally:
        del frame
    return None


class MemorizationCallback(TrainerCallback):
    """Runs ``compute(model)`` every ``every_n_steps`` optimizer steps, at each evaluation and at the
    end of training (each switchable), at most once per global step, and logs what it returns.

    Subclasses implement ``compute(model, state) -> dict[str, float | None]``; ``None`` values
    (an undefined number, such as a sink gap with no gap) are left out of the log. They list
    every name they can log in ``METRICS`` and the names they log with their settings in
    ``metric_names(model)``, which ``MemorizationAlert`` checks its thresholds against.
    """

    METRICS: tuple[str, ...] = ()

    def __init__(self, every_n_steps: int | None = 200, on_evaluate: bool = True, at_train_end: bool = True):
        if every_n_steps is not None and (isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int)
                                          or every_n_steps < 1):
            raise ValueError(f"every_n_steps must be a positive int or None (never by step); got {every_n_steps!r}.")
        self.every_n_steps = every_n_steps
        self.probe_on_evaluate = bool(on_evaluate)
        self.at_train_end = bool(at_train_end)
        self._trainer = None
        self._last_step: int | None = None
        self._warned_no_trainer = False

    def compute(self, model: torch.nn.Module, state) -> dict:
        raise NotImplementedError

    def metric_names(self, model: torch.nn.Module | None = None) -> set[str]:
        """The metric names this callback logs with its settings (on ``model``, where that matters)."""
        return set(self.METRICS)

    def set_trainer(self, trainer) -> None:
        """Log through this Trainer (found automatically when the callback is given to a stock Trainer)."""
        self._trainer = trainer

    def _find_trainer(self, state) -> None:
        if self._trainer is not None and self._trainer.state is state:
            return
        self._trainer = find_trainer(state) or self._trainer

    def on_init_end(self, args, state, control, **kwargs):
        self._find_trainer(state)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._find_trainer(state)
        if model is not None:
            self.check_model(unwrap_model(model))

    def check_model(self, model: torch.nn.Module) -> None:
        """Raise early (at train begin) if the probes cannot run on this model."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every_n_steps and state.global_step > 0 and state.global_step % self.every_n_steps == 0:
            self._probe(state, model)

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if self.probe_on_evaluate:
            self._probe(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.at_train_end:
            self._probe(state, model)

    def _probe(self, state, model) -> None:
        if model is None or self._last_step == state.global_step:
            return
        self._last_step = state.global_step
        self._find_trainer(state)
        try:
            raw = self.compute(unwrap_model(model), state)
        except FloatingPointError as err:  # a diverged model: say so, and log nothing rather than NaN
            logger.warning("%s skipped step %d: %s", type(self).__name__, state.global_step, err)
            return
        metrics = {}
        for name, value in raw.items():
            if value is None:
                continue
            value = float(value)
            if not math.isfinite(value):
                logger.warning("%s computed %s = %s at step %d; not logging it.", type(self).__name__, name, value,
                               state.global_step)
                continue
            metrics[name] = value
        if metrics:
            self._log(metrics, state)

    def _log(self, metrics: dict, state) -> None:
        if self._trainer is not None:
            # ``Trainer.log`` runs ``on_log``, where the Trainer's flow callback clears ``should_log``. A
            # probe at the end of a logging step would then swallow that step's loss entry, so the flag
            # the Trainer had raised for its own logging is put back.
            control = getattr(self._trainer, "control", None)
            pending_log = bool(control is not None and control.should_log)
            self._trainer.log(dict(metrics))
            if pending_log:
                self._trainer.control.should_log = True
            return
        state.log_history.append({**metrics, "step": state.global_step})
        if not self._warned_no_trainer:
            logger.warning(
                "%s could not find the Trainer that called it, so its metrics go to state.log_history only, not to "
                "the report_to integrations. Call callback.set_trainer(trainer) after building the Trainer.",
                type(self).__name__,
            )
            self._warned_no_trainer = True
