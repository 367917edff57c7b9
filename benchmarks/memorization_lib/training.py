"""Training one arm with the stock ``transformers.Trainer``, timing it and recording loss curves.

Every arm goes through ``train_arm``: the same Trainer settings (cosine schedule, AdamW, the
same number of optimizer steps and batch size, so the same token budget), with only what
defines the arm changed: the training rows (dedup), the labels (goldfish), sinks on the
model (memsinks), LoRA adapters, or ``memsinks.make_private`` on the Trainer (DP-SGD).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

import memsinks
from memsinks._memorization_corpus import Source, stream_rows, training_dataset
from memsinks._trainer_setup import experiment_arguments, sinks_trainer
from memsinks.probes import sequence_losses


class CountingCollator:
    """Wraps a collator and counts the real (unpadded) tokens of every batch it builds."""

    def __init__(self, collator):
        self.collator = collator
        self.tokens = 0

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collator(features)
        self.tokens += int(batch["attention_mask"].sum())
        return batch


class LossCurveCallback(TrainerCallback):
    """Every ``every`` optimizer steps (and at the end), the mean loss of a few repeated and held-out sequences.

    ``probe_sets``: name -> (token lists, sequence IDs). On a model with sinks each mode in
    ``modes`` is measured ("drop" and "own"); IDs are passed in "own" mode only. The points
    land in ``self.points`` as dicts ``{"step", "<set>_<mode>": loss}``.
    """

    def __init__(self, model, probe_sets: dict, every: int, pad_token_id: int, modes: tuple[str, ...] = ()):
        self.model = model
        self.probe_sets = probe_sets
        self.every = max(1, every)
        self.pad = pad_token_id
        self.modes = modes or (None,)
        self.points: list[dict] = []

    def measure(self, step: int) -> None:
        point = {"step": step}
        for mode in self.modes:
            with memsinks.sinks_mode(self.model, mode):
                for name, (seqs, ids) in self.probe_sets.items():
                    losses = sequence_losses(self.model, seqs, ids if mode == "own" else None, pad_token_id=self.pad)
                    point[f"{name}_{mode or 'plain'}"] = float(np.mean(losses))
        self.points.append(point)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.measure(state.global_step)


@dataclass
class TrainRun:
    """What training an arm produced: seconds of training (curve measurements excluded), real
    tokens seen, the Trainer's log (training loss per logging step), the probe curves and, for
    DP-SGD, the ε spent."""

    seconds: float
    tokens: int
    steps: int
    log_history: list = field(default_factory=list)
    curves: list = field(default_factory=list)
    epsilon: float | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def loss_curve(self) -> list[tuple[int, float]]:
        return [(int(e["step"]), float(e["loss"])) for e in self.log_history if "loss" in e and "step" in e]

    def stats(self) -> dict:
        """The training figures every arm's metrics carry (and ε under DP-SGD)."""
        out = {"tokens_per_s": self.tokens_per_s, "train_seconds": self.seconds, "steps": self.steps,
               "tokens": self.tokens}
        if self.epsilon is not None:
            out["epsilon"] = self.epsilon
        return out


class _CurveTimer(TrainerCallback):
    """Adds up the time the curve callback spends, so it can be taken out of the training time."""

    def __init__(self, curve: LossCurveCallback):
        self.curve = curve
        self.seconds = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        start = time.perf_counter()
        self.curve.on_step_end(args, state, control, **kwargs)
        self.seconds += time.perf_counter() - start


def steps_for(sources: list[Source], epochs: float, batch_size: int) -> int:
    """Optimizer steps for ``epochs`` passes over the stream of ``sources``: the token budget every arm gets."""
    return max(1, math.ceil(len(stream_rows(sources)) / batch_size * epochs))


def train_arm(
    model,
    tokenizer,
    dataset,
    *,
    output_dir: str,
    max_steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    collator_wrapper=None,
    privacy=None,
    curve: LossCurveCallback | None = None,
    warmup_steps: int = 10,
    log_points: int = 20,
) -> TrainRun:
    """Train ``model`` for ``max_steps`` optimizer steps with the stock Trainer.

    ``collator_wrapper``: a function taking the base collator and returning the one to use
    (goldfish). ``privacy``: a ``memsinks.PrivacyConfig``; the Trainer is then passed through
    ``memsinks.make_private``. ``log_points``: how many times the Trainer logs (under DP each
    log computes ε, which costs about a second on a CPU).
    """
    args = experiment_arguments(output_dir, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                                max_steps=max_steps, warmup_steps=min(warmup_steps, max_steps // 10),
                                logging_steps=max(1, max_steps // log_points), data_seed=seed)
    timer = _CurveTimer(curve) if curve is not None else None
    trainer = sinks_trainer(model, args, dataset, tokenizer,
                            wrap_collator=lambda base: CountingCollator(collator_wrapper(base) if collator_wrapper
                                                                        else base),
                            callbacks=[timer] if timer else [])
    counting = trainer.data_collator
    trainer.remove_callback(PrinterCallback)  # the benchmark prints its own one line per arm
    if privacy is not None:
        trainer = memsinks.make_private(trainer, privacy)
    if curve is not None:
        curve.measure(0)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start - (timer.seconds if timer else 0.0)
    epsilon = None
    if privacy is not None:
        eps = [e["privacy/epsilon"] for e in trainer.state.log_history if "privacy/epsilon" in e]
        epsilon = float(eps[-1]) if eps else None
    return TrainRun(seconds=seconds, tokens=counting.tokens, steps=int(trainer.state.global_step),
                    log_history=list(trainer.state.log_history), curves=list(curve.points) if curve else [],
                    epsilon=epsilon)


@dataclass
class ArmPlan:
    """One training arm of a scenario: its stream and how it is trained.

    ``method``: "plain", "goldfish" (the goldfish loss on the collator), "dp" (DP-SGD through
    ``memsinks.make_private``) or "sinks" (a model with sinks; the stream's sequence IDs are
    the sources' own where given, else content IDs). ``modes``: the sinks modes it is measured
    in (None: a model without sinks). ``same_as``: the name of an arm trained on exactly the
    same stream with the same method, whose model and numbers this arm reuses (a dedup that
    removed nothing trains exactly what the standard arm trained).
    """

    name: str
    sources: list[Source]
    method: str = "plain"
    modes: tuple = (None,)
    same_as: str | None = None

    def __post_init__(self):
        if self.method not in ("plain", "goldfish", "dp", "sinks"):
            raise ValueError(f"Unknown training method {self.method!r} for arm {self.name!r}; choose plain, goldfish, "
                             "dp or sinks.")


def train_plan(plan: ArmPlan, model, tokenizer, probe: dict, s, *, seed: int, max_steps: int, learning_rate: float,
               **train_kwargs) -> TrainRun:
    """Train ``model`` on ``plan``'s stream with its method; ``probe`` ({name: token rows}) is measured along
    training, in ``drop`` and ``own`` modes when the model has sinks (own: each probe row's content ID).
    ``s``: the scenario's settings (goldfish k/h, DP ε and learning rate, batch size, logging)."""
    from .goldfish import GoldfishCollator

    with_sinks = plan.method == "sinks"
    ds = training_dataset(plan.sources, seed, with_ids=with_sinks)
    probe_sets = {k: (v, [memsinks.content_id(x) for x in v]) for k, v in probe.items()}
    curve = LossCurveCallback(model, probe_sets, max_steps // s.curve_points, tokenizer.pad_token_id,
                              modes=("drop", "own") if with_sinks else ())
    privacy = None
    if plan.method == "dp":
        privacy = memsinks.PrivacyConfig(target_epsilon=s.dp_epsilon, max_grad_norm=s.dp_max_grad_norm)
        learning_rate = s.dp_learning_rate or learning_rate
    wrapper = (lambda c: GoldfishCollator(c, s.goldfish_k, s.goldfish_h)) if plan.method == "goldfish" else None
    with tempfile.TemporaryDirectory() as tmp:
        return train_arm(model, tokenizer, ds, output_dir=os.path.join(tmp, plan.name), max_steps=max_steps,
                         batch_size=s.batch_size, learning_rate=learning_rate, seed=seed, collator_wrapper=wrapper,
                         privacy=privacy, curve=curve, log_points=s.log_points, **train_kwargs)


def train_scenario_arm(arm: str, model, tokenizer, standard: list[Source], dedup: list[Source], probe: dict, s, *,
                       seed: int, max_steps: int, learning_rate: float, with_sinks: bool, **train_kwargs) -> TrainRun:
    """Train one arm of scenarios 1 and 2 by name: ``dedup`` on the ``dedup`` stream, every other arm on
    ``standard``; ``goldfish`` and ``dp`` with their methods, a model with sinks (``with_sinks``) with sinks."""
    method = "sinks" if with_sinks else arm if arm in ("goldfish", "dp") else "plain"
    plan = ArmPlan(arm, dedup if arm == "dedup" else standard, method)
    return train_plan(plan, model, tokenizer, probe, s, seed=seed, max_steps=max_steps, learning_rate=learning_rate,
                      **train_kwargs)
