"""Scenario 1: train a small GPT-2 from scratch on text windows, some repeated, once per arm and seed.

Arms (each a fresh model with the same initialisation seed, the same optimizer-step budget
and batch size, so the same number of tokens):

- ``standard``: every unique window once, the repeated windows and canaries ``repeats`` times;
- ``dedup``: each repeated window and canary kept once (the budget then buys more epochs);
- ``goldfish``: the standard stream with the goldfish loss (k, h of the settings);
- ``dp``: the standard stream under DP-SGD at ε = ``dp_epsilon`` (``memsinks.make_private``);
- ``memsinks``: the standard stream on a model with split-placement sinks, each window routed
  by its content ID; measured with the sinks dropped (``memsinks_drop``, the shipped model),
  in each sequence's own sinks (``memsinks_own``) and scaled by p_mem (``memsinks_mean``).
"""

from __future__ import annotations

import time

import memsinks
from memsinks._memorization_corpus import stream_rows
from memsinks._small_decoder import build_decoder

from .data import build_scenario1
from .metrics import evaluate_scenario1
from .training import steps_for, train_scenario_arm

TRAINING_ARMS = ("standard", "dedup", "goldfish", "dp", "memsinks")
SINK_MODES = ("drop", "own", "mean")


def privacy_available() -> bool:
    return hasattr(memsinks, "make_private") and hasattr(memsinks, "PrivacyConfig")


def reported_arms(training_arms) -> list[str]:
    """Result names of the training arms: ``memsinks`` becomes one entry per sinks mode."""
    out = []
    for arm in training_arms:
        out += [f"memsinks_{m}" for m in SINK_MODES] if arm == "memsinks" else [arm]
    return out


def scenario1_model(s, tokenizer, seed: int, with_sinks: bool, sinks_config: dict | None = None):
    """An arm's freshly initialised decoder, with split sinks (the settings' p_gen / p_mem, routing seeded by
    ``seed``, overridden by ``sinks_config``) when ``with_sinks``."""
    model = build_decoder(s.model, len(tokenizer), seed=seed, token_id=tokenizer.pad_token_id)
    if with_sinks:
        cfg = dict(placement="split", p_gen=s.p_gen, p_mem=s.p_mem, routing_seed=seed)
        cfg.update(sinks_config or {})
        memsinks.add_sinks(model, memsinks.SinksConfig(**cfg))
    return model


def run_seed(text: str, source: str, tokenizer, s, seed: int, *, arms=TRAINING_ARMS, echo=print,
             sinks_config: dict | None = None) -> dict:
    """Train and measure every arm for one seed.

    Returns ``{"arms": {name: metrics}, "curves": {arm: {...}}, "skipped": {arm: reason}, "data": {...}}``.
    ``sinks_config`` overrides fields of the memsinks arm's ``SinksConfig`` (the sweep uses it).
    """
    data = build_scenario1(text, source, tokenizer, s, seed)
    corpus = data.corpus
    standard, dedup = data.sources(s.repeats, s.repeats), data.sources(1, 1)
    n_rows, n_dedup = len(stream_rows(standard)), len(stream_rows(dedup))
    max_steps = steps_for(standard, s.epochs, s.batch_size)
    out = {"arms": {}, "curves": {}, "skipped": {}, "data": {
        "source": source, "unique_windows": len(corpus.train), "repeated_windows": len(corpus.repeated),
        "heldout_windows": len(corpus.heldout), "canaries": len(data.canaries), "training_rows": n_rows,
        "dedup_rows": n_dedup, "max_steps": max_steps,
        "repeated_share_of_stream": (n_rows - len(corpus.train)) / n_rows,
    }}
    probe = {"repeated": corpus.repeated[:s.curve_sequences], "heldout": corpus.heldout[:s.curve_sequences]}
    for arm in arms:
        if arm == "dp" and not privacy_available():
            out["skipped"][arm] = "memsinks.make_private / memsinks.PrivacyConfig are not in this checkout"
            echo(f"  [seed {seed}] {arm}: skipped ({out['skipped'][arm]})")
            continue
        with_sinks = arm == "memsinks"
        model = scenario1_model(s, tokenizer, seed, with_sinks, sinks_config)
        run = train_scenario_arm(arm, model, tokenizer, standard, dedup, probe, s, seed=seed, max_steps=max_steps,
                                 learning_rate=s.learning_rate, with_sinks=with_sinks)
        start = time.perf_counter()
        modes = SINK_MODES if with_sinks else (None,)
        for mode in modes:
            name = f"memsinks_{mode}" if mode else arm
            metrics = evaluate_scenario1(model, data, mode, s, seed)
            metrics.update(run.stats())
            out["arms"][name] = metrics
        eval_s = time.perf_counter() - start
        out["curves"][arm] = {"train_loss": run.loss_curve(), "probe": run.curves}
        m = out["arms"]["memsinks_drop" if with_sinks else arm]
        echo(f"  [seed {seed}] {arm:<9} train {run.seconds:5.1f}s ({run.tokens_per_s:,.0f} tok/s), eval {eval_s:4.1f}s: "
             f"held-out {m['heldout_loss']:.3f}, repeated {m['repeated_loss']:.3f}, extraction {m['extraction_exact']:.2f}"
             + (f", own-mode repeated {out['arms']['memsinks_own']['repeated_loss']:.3f}" if with_sinks else ""))
    return out
