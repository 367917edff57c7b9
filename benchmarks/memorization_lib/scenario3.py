"""Scenario 3: a small GPT-2 from scratch on a general text mixed with a second domain seen only as repeats.

The stream (``mixture``): every unique window of the general text once, each of ``n_domain``
stories and each canary ``repeats`` times. Arms, as in scenario 1 (fresh model, same seed, same
step budget): ``standard``, ``dedup`` (each story and canary once, so the budget buys more
passes over the general text), ``dedup_minhash`` (MinHash LSH near-duplicate dedup),
``goldfish``, ``dp`` and ``memsinks`` (measured with sinks dropped, own and mean). The gap is
the repeated stories' loss against held-out stories of the domain; ``domain_heldout_loss`` is
what a model learned of the domain, and ``general_heldout_loss`` of the general text.

The near-duplicate variant (``run_near_duplicates_seed``) trains on near-duplicate copies of
the stories instead of exact repeats (no canaries; see ``near_duplicates``), with the arms of
``s.near_duplicate_arms``, and scores memorization on the stories the copies came from.
"""

from __future__ import annotations

import dataclasses

from memsinks._memorization_corpus import stream_rows

from .arms import keys, run_stream
from .metrics import evaluate_scenario3
from .mixture import build_scenario3
from .near_duplicates import TokenSwapper, near_duplicate_facts
from .scenario1 import scenario1_model

TRAINING_ARMS = ("standard", "dedup", "dedup_minhash", "goldfish", "dp", "memsinks")


def _facts(data, stream, out: dict) -> dict:
    rows = stream_rows(stream)
    tokens = sum(map(len, rows))
    repeated_tokens = tokens - sum(map(len, data.general))  # the domain's copies and the canaries'
    return {
        "source": data.source, "general_windows": len(data.general),
        "general_heldout_windows": len(data.general_heldout),
        "domain_sequences": len(data.domain), "domain_heldout_sequences": len(data.domain_heldout),
        "repeated_scored": len(data.repeated_eval), "canaries": len(data.canaries), "training_rows": len(rows),
        "domain_tokens_mean": sum(map(len, data.domain)) / len(data.domain),
        "repeated_share_of_stream_tokens": repeated_tokens / tokens,
        "max_steps": out.pop("max_steps"), "dedup": out.pop("dedup"),
    }


def _run(data, stream, arms, tokenizer, s, seed: int, echo, label: str) -> dict:
    probe = {"repeated": data.repeated_eval[:s.curve_sequences], "heldout": data.domain_heldout[:s.curve_sequences]}
    groups = {"domain": keys(data.domain), "general": keys(data.general),
              "canaries": keys([c.tokens for c in data.canaries])}
    out = run_stream(arms, stream, groups, tokenizer=tokenizer, s=s, seed=seed,
                     build_model=lambda sinks: scenario1_model(s, tokenizer, seed, sinks),
                     evaluate=lambda model, mode: evaluate_scenario3(model, data, mode, s, seed),
                     probe=probe, echo=echo, label=label)
    out["data"] = _facts(data, stream, out)
    return out


def run_seed(text: str, source: str, tokenizer, s, seed: int, *, arms=TRAINING_ARMS, echo=print) -> dict:
    """Train and measure every arm on the mixture with exact repeats, for one seed (``scenario1.run_seed``'s shape)."""
    data = build_scenario3(text, source, tokenizer, s, seed)
    out = _run(data, data.sources(s.repeats), arms, tokenizer, s, seed, echo, "")
    out["data"]["repeats"] = s.repeats
    return out


def run_near_duplicates_seed(text: str, source: str, tokenizer, s, seed: int, *, echo=print) -> dict:
    """The near-duplicate variant for one seed: ``s.repeats`` copies of each story, ``s.near_duplicate_rate`` of
    each copy's tokens swapped; memorization scored on the original stories."""
    data = dataclasses.replace(build_scenario3(text, source, tokenizer, s, seed), canaries=[])
    stream = data.near_duplicate_sources(TokenSwapper.from_tokenizer(tokenizer), s.repeats, s.near_duplicate_rate,
                                         40_000 + seed)
    out = _run(data, stream, s.near_duplicate_arms, tokenizer, s, seed, echo, "near-dup ")
    out["data"].update(near_duplicate_facts(data.domain, stream[1], s.near_duplicate_rate, tokenizer, s.minhash.ngram))
    return out
