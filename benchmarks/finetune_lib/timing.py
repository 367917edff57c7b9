"""Step time of the arms with a step-time target against standard fine-tuning, measured in one run.

Two measurements, both alternating the arms' steps so that load on the machine hits every arm alike:

- ``step_time_ratios``: a few training steps (forward, backward, AdamW) of each arm on one batch
  of the base model, rotating the order; the median step times give the ratios. The sinks'
  warm-up (``SinksConfig.sink_warmup_steps``, a few of a run's steps) is marked done first. The
  weights hardly move, so a step that depends on what the model has learned (the routing default
  computes its sinks' pass at the tokens the shipped model still misses) is timed as at the
  start of fine-tuning.
- ``whole_run_times``: every arm's whole training run, with the stock Trainer as the benchmark
  trains it, each Trainer in a thread of its own and their steps taken in turn (``Lockstep``);
  the ratio of the arms' summed step times, and of each quarter of the run.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from typing import Sequence

import torch
from transformers import TrainerCallback

import memsinks
from memsinks.warmup import PROGRESS_BUFFER

from .train import _apply, arm_trainer

TIMED_ARMS = ("standard", "sinks_defaults", "sinks", "sinks_private", "sinks_private_marginal", "sinks_memorized",
              "sinks_memorized_top10", "sinks_memorized_top10_missed", "sinks_memorized_top5_missed")


def _batch(data, tokenizer, n: int):
    rows = data.training_rows()[:n]
    width = max(len(r.tokens) for r in rows)
    pad = tokenizer.pad_token_id
    x = torch.full((n, width), pad)
    labels = torch.full((n, width), -100)
    private = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, :len(r.tokens)] = torch.tensor(r.tokens)
        labels[i, :len(r.tokens)] = torch.tensor(r.tokens)
        private[i, :len(r.tokens)] = torch.tensor(r.secret)
    ids = torch.tensor([data.record_id(r) for r in rows])
    return x, labels, ids, private


def _finish_warmup(model) -> None:
    """Mark the sinks' warm-up as done (its progress buffer at the configured count), as after a run's first steps."""
    if not memsinks.has_sinks(model):
        return
    steps = memsinks.get_sinks_config(model).sink_warmup_steps
    for name, buffer in model.named_buffers():
        if name.endswith(PROGRESS_BUFFER):
            buffer.fill_(steps)


def step_time_ratios(arms, base, data, tokenizer, settings, steps: int) -> dict[str, float]:
    """Median step time of each timed arm over ``standard``'s (arms absent from ``arms`` are skipped)."""
    chosen = [a for a in arms if a.name in TIMED_ARMS]
    if not any(a.name == "standard" for a in chosen) or len(chosen) < 2:
        return {}
    x, labels, ids, private = _batch(data, tokenizer, settings.batch_size)
    runs = {}
    for arm in chosen:
        model = _apply(arm, base, settings).train()
        _finish_warmup(model)
        kwargs = {"input_ids": x, "labels": labels}
        if arm.has_sinks:
            kwargs["sequence_ids"] = ids
        if arm.private_mask:
            kwargs["private_mask"] = private
        runs[arm.name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0), kwargs, [])
    names = list(runs)
    for step in range(steps + 1):
        order = names[step % len(names):] + names[:step % len(names)]
        for name in order:
            model, opt, kwargs, times = runs[name]
            start = time.perf_counter()
            model(**kwargs).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step:  # the first round warms up
                times.append(time.perf_counter() - start)
    reference = statistics.median(runs["standard"][3])
    return {name: statistics.median(times) / reference for name, (_, _, _, times) in runs.items()}


class Lockstep:
    """Trainers, each in a thread of its own, take their steps in turn, one at a time, and every step is timed.

    An arm's step runs from the Trainer's ``on_step_begin`` to its ``on_step_end`` (forward,
    backward, clipping, optimizer and scheduler); it waits for the arm's turn, and ends by
    passing the turn to the next arm still training. ``seconds[name]`` holds an arm's step
    times in order.
    """

    def __init__(self, names: Sequence[str]):
        self._turn = threading.Condition()
        self._training = list(names)
        self._next = 0
        self.seconds: dict[str, list[float]] = {name: [] for name in names}

    def callback(self, name: str) -> TrainerCallback:
        """The callback that makes the Trainer of ``name`` take its steps in turn."""
        return _TakeTurns(self, name)

    def wait(self, name: str) -> None:
        with self._turn:
            self._turn.wait_for(lambda: self._training[self._next] == name)

    def done(self, name: str, seconds: float) -> None:
        with self._turn:
            self.seconds[name].append(seconds)
            self._next = (self._training.index(name) + 1) % len(self._training)
            self._turn.notify_all()

    def leave(self, name: str) -> None:
        """``name`` takes no more steps (its run ended, or failed): the turn skips it from now on."""
        with self._turn:
            at = self._training.index(name)
            self._training.remove(name)
            if self._next > at:
                self._next -= 1
            self._next = self._next % len(self._training) if self._training else 0
            self._turn.notify_all()


class _TakeTurns(TrainerCallback):
    """One arm's side of a ``Lockstep``: its Trainer's steps wait for the arm's turn and are timed."""

    def __init__(self, lockstep: Lockstep, name: str):
        self.lockstep, self.name, self.start = lockstep, name, 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.lockstep.wait(self.name)
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.lockstep.done(self.name, time.perf_counter() - self.start)


def _ratio(times: Sequence[float], reference: Sequence[float]) -> float:
    return sum(times) / sum(reference)


def _quarters(times: Sequence[float]) -> list[Sequence[float]]:
    """``times`` cut into four consecutive parts as equal in length as they can be."""
    n = len(times)
    return [times[n * i // 4:n * (i + 1) // 4] for i in range(4)]


def whole_run_times(arms, base, data, tokenizer, settings, seed: int) -> dict:
    """The timed arms' whole training runs in lockstep: ``step_time_ratios`` (each arm's summed step time over
    ``standard``'s), ``quarter_ratios`` (the same over each quarter of the run's steps), ``steps``, ``seconds`` and
    ``train_loss`` (the Trainer's, to compare with the arm's row of a benchmark run: the same model was trained).

    Raises RuntimeError, from the first arm's error, when an arm's training fails (the others run to their end).
    """
    chosen = [a for a in arms if a.name in TIMED_ARMS]
    if not any(a.name == "standard" for a in chosen) or len(chosen) < 2:
        return {"step_time_ratios": {}}
    lockstep = Lockstep([a.name for a in chosen])
    errors: dict[str, BaseException] = {}
    losses: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as out:
        trainers = {a.name: arm_trainer(a, base, data, tokenizer, settings, seed, os.path.join(out, a.name),
                                        [lockstep.callback(a.name)])[0] for a in chosen}

        def train(name: str) -> None:
            try:
                losses[name] = trainers[name].train().training_loss
            except BaseException as err:  # noqa: B036 - re-raised in the calling thread
                errors[name] = err
            finally:
                lockstep.leave(name)

        workers = [threading.Thread(target=train, args=(name,), name=f"timed-{name}") for name in trainers]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    if errors:
        name, err = next(iter(errors.items()))
        raise RuntimeError(f"Timing the whole runs: arm {name!r} failed in training: {err}") from err
    times, reference = lockstep.seconds, lockstep.seconds["standard"]
    return {
        "step_time_ratios": {name: _ratio(t, reference) for name, t in times.items()},
        "quarter_ratios": {name: [_ratio(q, r) for q, r in zip(_quarters(t), _quarters(reference))]
                           for name, t in times.items()},
        "steps": {name: len(t) for name, t in times.items()},
        "seconds": {name: sum(t) for name, t in times.items()},
        "train_loss": losses,
    }
