"""An alert on logged metrics: warn, and optionally stop training, when a metric crosses a threshold.

A misspelt metric name would never fire and never say so, so names are checked twice: at
construction, a ``memorization/...`` name must be one some memsinks callback can log (and a
name without the prefix that matches one is caught too); at the start of training, a watched
``memorization/...`` name must be one that the probe callbacks attached to the same Trainer
log with their settings. Both errors suggest the nearest known name. Other names (the
Trainer's own ``loss``, ``eval_loss``, ...) are not checked.
"""

from __future__ import annotations

import difflib
import logging
import math

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from memsinks.callbacks.base import METRIC_PREFIX, MemorizationCallback, find_trainer
from memsinks.callbacks.canary import CanaryCallback
from memsinks.callbacks.probe import ProbeCallback
from memsinks.callbacks.sink_gap import SinkGapCallback

logger = logging.getLogger("memsinks")
KNOWN_METRICS = sorted({*ProbeCallback.METRICS, *SinkGapCallback.METRICS, *CanaryCallback.METRICS})


def _did_you_mean(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _check_names(names) -> None:
    """Refuse a ``memorization/`` name no memsinks callback logs, or a bare name that is one of them unprefixed."""
    for name in names:
        if name.startswith(METRIC_PREFIX):
            if name not in KNOWN_METRICS:
                raise ValueError(f"MemorizationAlert: no memsinks callback logs {name!r}."
                                 f"{_did_you_mean(name, KNOWN_METRICS)} The known names are {KNOWN_METRICS}.")
        elif METRIC_PREFIX + name in KNOWN_METRICS:
            raise ValueError(f"MemorizationAlert: the callbacks log {name!r} as {METRIC_PREFIX + name!r}; use that "
                             "name.")


def _check_thresholds(name: str, thresholds) -> dict[str, float]:
    if thresholds is None:
        return {}
    if not isinstance(thresholds, dict):
        raise TypeError(f"{name} maps metric names to thresholds, e.g. {{'memorization/extraction_exact': 0.01}}.")
    out = {}
    for metric, value in thresholds.items():
        if not isinstance(metric, str) or isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise ValueError(f"{name}: thresholds are finite numbers keyed by metric name; got {metric!r}: {value!r}.")
        out[metric] = float(value)
    return out


class MemorizationAlert(TrainerCallback, ExportableState):
    """Watches every logged entry; when a metric is above its ``above`` threshold (or below its ``below``
    threshold) in ``patience`` consecutive entries that carry it, logs a warning and, with
    ``stop_training=True``, stops training (``control.should_training_stop``).

    Example: ``MemorizationAlert(above={"memorization/extraction_exact": 0.01}, stop_training=True)``
    stops once more than 1% of the probed members are extracted verbatim. A ``memorization/``
    name that no attached callback logs is an error (at construction or when training starts,
    see the module docstring).

    It reads what the probe callbacks log, which every rank logs alike, so every rank stops at
    the same step. Its counters are checkpointed (``ExportableState``) and come back on resume
    with ``TrainingArguments(restore_callback_states_from_checkpoint=True)``. Use one instance
    for all thresholds: the Trainer's checkpointing mishandles several of one callback class.
    """

    def __init__(self, above: dict | None = None, below: dict | None = None, stop_training: bool = False,
                 patience: int = 1):
        self.above = _check_thresholds("above", above)
        self.below = _check_thresholds("below", below)
        if not self.above and not self.below:
            raise ValueError("MemorizationAlert needs at least one threshold: above={metric: value} or below={...}.")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive int (consecutive crossings); got {patience!r}.")
        _check_names(list(self.above) + list(self.below))
        self.stop_training = bool(stop_training)
        self.patience = patience
        self.crossings: dict[str, int] = {}
        self.fired: dict[str, list] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        trainer = find_trainer(state)
        if trainer is not None:
            self.check_attached(trainer.callback_handler.callbacks, model)

    def check_attached(self, callbacks, model=None) -> None:
        """Raise if a watched ``memorization/`` metric is logged by none of ``callbacks`` (on ``model``)."""
        from memsinks.unwrap import unwrap_model

        inner = unwrap_model(model) if model is not None else None
        probes = [cb for cb in callbacks if isinstance(cb, MemorizationCallback)]
        logged = set().union(*(cb.metric_names(inner) for cb in probes)) if probes else set()
        for name in list(self.above) + list(self.below):
            if name.startswith(METRIC_PREFIX) and name not in logged:
                attached = ", ".join(type(cb).__name__ for cb in probes) or "none"
                raise ValueError(
                    f"MemorizationAlert watches {name!r}, but none of the probe callbacks given to this Trainer logs "
                    f"it (attached: {attached}; they log {sorted(logged)}).{_did_you_mean(name, logged)} Add the "
                    "callback (and probe) that logs it, or fix the name.")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        rules = [(m, t, ">") for m, t in self.above.items()] + [(m, t, "<") for m, t in self.below.items()]
        for metric, threshold, op in rules:
            if metric not in logs:
                continue
            value = float(logs[metric])
            crossed = value > threshold if op == ">" else value < threshold
            self.crossings[metric] = self.crossings.get(metric, 0) + 1 if crossed else 0
            if self.crossings[metric] < self.patience:
                continue
            self.fired.setdefault(metric, [int(state.global_step), value])
            action = "stopping training" if self.stop_training else "training continues"
            if state.is_world_process_zero:
                logger.warning(
                    "memsinks alert at step %d: %s = %.6g %s threshold %.6g (%d consecutive); %s.",
                    state.global_step, metric, value, "above" if op == ">" else "below", threshold,
                    self.crossings[metric], action,
                )
            if self.stop_training:
                control.should_training_stop = True

    def state(self) -> dict:
        return {
            "args": {"above": self.above, "below": self.below, "stop_training": self.stop_training,
                     "patience": self.patience},
            "attributes": {"crossings": dict(self.crossings), "fired": dict(self.fired)},
        }
