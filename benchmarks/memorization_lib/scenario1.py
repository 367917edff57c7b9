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

The near-duplicate variant (``run_near_duplicates_seed``) trains on near-duplicate copies of the
repeated windows instead of exact repeats (no canaries; see ``near_duplicates``), with the arms
of ``s.near_duplicate_arms`` (``dedup_minhash``: MinHash LSH dedup; memsinks with each copy keyed
by the window it came from), and scores memorization on the windows the copies came from.
"""

from __future__ import annotations

import dataclasses

import memsinks
from memsinks._memorization_corpus import stream_rows
from memsinks._small_decoder import build_decoder

from .arms import keys, run_stream
from .data import build_scenario1
from .metrics import evaluate_scenario1
from .near_duplicates import TokenSwapper, near_duplicate_facts

TRAINING_ARMS = ("standard", "dedup", "goldfish", "dp", "memsinks")


def scenario1_model(s, tokenizer, seed: int, with_sinks: bool, sinks_config: dict | None = None):
    """An arm's freshly initialised decoder of shape ``s.model``; with ``with_sinks``, sinks from ``s.sinks``
    (``SinksConfig`` keyword arguments; routing seeded by ``seed`` unless they say otherwise), overridden by
    ``sinks_config``."""
    model = build_decoder(s.model, len(tokenizer), seed=seed, token_id=tokenizer.pad_token_id)
    if with_sinks:
        cfg = {"routing_seed": seed, **s.sinks, **(sinks_config or {})}
        memsinks.add_sinks(model, memsinks.SinksConfig(**cfg))
    return model


def _run(data, stream, arms, tokenizer, s, seed: int, sinks_config, echo, label: str) -> dict:
    corpus = data.corpus
    probe = {"repeated": corpus.repeated[:s.curve_sequences], "heldout": corpus.heldout[:s.curve_sequences]}
    groups = {"repeated": keys(corpus.repeated), "unique": keys(corpus.train), "canaries": keys(corpus.canaries)}
    out = run_stream(arms, stream, groups, tokenizer=tokenizer, s=s, seed=seed,
                     build_model=lambda sinks: scenario1_model(s, tokenizer, seed, sinks, sinks_config),
                     evaluate=lambda model, mode: evaluate_scenario1(model, data, mode, s, seed),
                     probe=probe, echo=echo, label=label)
    rows = stream_rows(stream)
    out["data"] = {
        "source": data.source, "unique_windows": len(corpus.train), "repeated_windows": len(corpus.repeated),
        "heldout_windows": len(corpus.heldout), "canaries": len(data.canaries), "training_rows": len(rows),
        "max_steps": out.pop("max_steps"), "repeated_share_of_stream": (len(rows) - len(corpus.train)) / len(rows),
        "dedup": out.pop("dedup"),
    }
    return out


def run_seed(text: str, source: str, tokenizer, s, seed: int, *, arms=TRAINING_ARMS, echo=print,
             sinks_config: dict | None = None) -> dict:
    """Train and measure every arm for one seed.

    Returns ``{"arms": {name: metrics}, "curves": {arm: {...}}, "skipped": {arm: reason}, "data": {...}}``.
    ``sinks_config`` overrides fields of the memsinks arm's ``SinksConfig`` (the sweep uses it).
    """
    data = build_scenario1(text, source, tokenizer, s, seed)
    out = _run(data, data.sources(s.repeats, s.repeats), arms, tokenizer, s, seed, sinks_config, echo, "")
    out["data"]["dedup_rows"] = out["arms"]["dedup"]["training_rows"] if "dedup" in out["arms"] else None
    return out


def run_near_duplicates_seed(text: str, source: str, tokenizer, s, seed: int, *, echo=print) -> dict:
    """The near-duplicate variant for one seed: ``s.repeats`` copies of each repeated window, each with
    ``s.near_duplicate_rate`` of its tokens swapped, no canaries; memorization scored on the original windows."""
    data = build_scenario1(text, source, tokenizer, s, seed)
    data = dataclasses.replace(data, canaries=[])
    stream = data.near_duplicate_sources(TokenSwapper.from_tokenizer(tokenizer), s.repeats, s.near_duplicate_rate,
                                         40_000 + seed)
    out = _run(data, stream, s.near_duplicate_arms, tokenizer, s, seed, None, echo, "near-dup ")
    out["data"].update(near_duplicate_facts(data.corpus.repeated, stream[1], s.near_duplicate_rate, tokenizer,
                                            s.minhash.ngram))
    return out
