"""Scenarios 1 and 3's arms as plans (stream + method), and one loop that trains and measures them.

``plan_arms`` turns arm names into ``ArmPlan``s on one training stream: ``standard``; ``dedup``
(exact) and ``dedup_minhash`` (MinHash LSH), each on its deduplicated stream, with a report of
what it found and missed; ``goldfish`` and ``dp`` on the standard stream; ``memsinks`` with
each row keyed by the sequence it is a copy of (for exact repeats that is its content ID), and
for near-duplicates the two other ID choices, ``memsinks_content_ids`` (each copy its own
tokens' ID) and ``memsinks_minhash_ids`` (its MinHash cluster). A dedup whose stream equals an
earlier arm's trains exactly what that arm trained, so it reuses its numbers (``same_as``).
"""

from __future__ import annotations

import time

import memsinks
from memsinks._memorization_corpus import stream_rows

from .dedup import cluster_ids, dedup_report, deduplicate
from .near_duplicates import content_ids, origins, source_ids
from .training import ArmPlan, steps_for, train_plan

SINK_MODES = ("drop", "own", "mean")
_DEDUP = {"dedup": "exact", "dedup_minhash": "minhash"}


def privacy_available() -> bool:
    return hasattr(memsinks, "make_private") and hasattr(memsinks, "PrivacyConfig")


def plan_arms(arms, stream, tokenizer, s, groups: dict[str, set[int]]) -> tuple[list[ArmPlan], dict]:
    """Plans for ``arms`` on ``stream`` (a list of ``Source``s), and the dedup reports
    (``{"dedup": ..., "dedup_minhash": ...}``, see ``dedup.dedup_report``; ``groups`` names the
    origin keys of the corpus' parts)."""
    keys = origins(stream)
    found: dict[str, tuple] = {}
    for arm in arms:
        if arm in _DEDUP or (arm == "memsinks_minhash_ids" and "dedup_minhash" not in found):
            name = arm if arm in _DEDUP else "dedup_minhash"
            found[name] = deduplicate(stream, _DEDUP[name], tokenizer, s.minhash)
    reports = {name: dedup_report(clusters, keys, groups) for name, (_, clusters) in found.items()}
    plans: list[ArmPlan] = []
    trained: dict[str, list] = {}  # arm -> the rows of its stream, for arms trained plainly on a stream of their own
    for arm in arms:
        if arm == "standard" or arm in _DEDUP:
            sources = stream if arm == "standard" else found[arm][0]
            rows = stream_rows(sources)
            same = next((name for name, r in trained.items() if r == rows), None)
            plans.append(ArmPlan(arm, sources, same_as=same))
            if same is None:
                trained[arm] = rows
        elif arm in ("goldfish", "dp"):
            plans.append(ArmPlan(arm, stream, arm))
        elif arm == "memsinks":
            plans.append(ArmPlan(arm, source_ids(stream), "sinks", SINK_MODES))
        elif arm == "memsinks_content_ids":
            plans.append(ArmPlan(arm, content_ids(stream), "sinks", ("drop",)))
        elif arm == "memsinks_minhash_ids":
            plans.append(ArmPlan(arm, cluster_ids(stream, found["dedup_minhash"][1]), "sinks", ("drop",)))
        else:
            raise ValueError(f"Unknown arm {arm!r}.")
    return plans, reports


def reported_name(plan: ArmPlan, mode: str | None) -> str:
    return f"{plan.name}_{mode}" if mode else plan.name


def run_plans(plans: list[ArmPlan], *, build_model, evaluate, probe: dict, tokenizer, s, seed: int, max_steps: int,
              echo=print, label: str = "") -> dict:
    """Train and measure every plan; returns ``{"arms": {name: metrics}, "curves": {...}, "skipped": {...}}``.

    ``build_model(with_sinks)``: a fresh model for an arm; ``evaluate(model, mode)``: its metrics
    in a sinks mode (None: no sinks). Every arm trains ``max_steps`` steps. A plan with
    ``same_as`` copies that arm's metrics (with ``"same_stream_as"`` set) instead of training.
    """
    out: dict = {"arms": {}, "curves": {}, "skipped": {}}
    for plan in plans:
        if plan.method == "dp" and not privacy_available():
            out["skipped"][plan.name] = "memsinks.make_private / memsinks.PrivacyConfig are not in this checkout"
            echo(f"  [{label}seed {seed}] {plan.name}: skipped ({out['skipped'][plan.name]})")
            continue
        if plan.same_as is not None:
            out["arms"][plan.name] = dict(out["arms"][plan.same_as], same_stream_as=plan.same_as)
            echo(f"  [{label}seed {seed}] {plan.name:<9} trains exactly {plan.same_as}'s stream, so it has "
                 f"{plan.same_as}'s model and numbers")
            continue
        model = build_model(plan.method == "sinks")
        run = train_plan(plan, model, tokenizer, probe, s, seed=seed, max_steps=max_steps,
                         learning_rate=s.learning_rate)
        start = time.perf_counter()
        for mode in plan.modes:
            metrics = evaluate(model, mode)
            metrics.update(run.stats())
            metrics["training_rows"] = len(stream_rows(plan.sources))
            out["arms"][reported_name(plan, mode)] = metrics
        out["curves"][plan.name] = {"train_loss": run.loss_curve(), "probe": run.curves}
        m = out["arms"][reported_name(plan, plan.modes[0])]
        held = m.get("heldout_loss", m.get("domain_heldout_loss"))
        echo(f"  [{label}seed {seed}] {plan.name:<9} train {run.seconds:5.1f}s ({run.tokens_per_s:,.0f} tok/s), eval "
             f"{time.perf_counter() - start:4.1f}s: held-out {held:.3f}, repeated {m['repeated_loss']:.3f}, "
             f"extraction {m['extraction_exact']:.2f}"
             + (f", general held-out {m['general_heldout_loss']:.3f}" if "general_heldout_loss" in m else ""))
    return out


def run_stream(arms, stream, groups: dict[str, set[int]], *, tokenizer, s, seed: int, build_model, evaluate,
               probe: dict, echo=print, label: str = "") -> dict:
    """Plan ``arms`` on ``stream`` and run them, each for ``s.epochs`` passes' worth of the stream's steps.

    Returns ``run_plans``' result with ``"max_steps"`` and ``"dedup"`` (the dedup reports) added.
    """
    max_steps = steps_for(stream, s.epochs, s.batch_size)
    plans, reports = plan_arms(arms, stream, tokenizer, s, groups)
    out = run_plans(plans, build_model=build_model, evaluate=evaluate, probe=probe, tokenizer=tokenizer, s=s,
                    seed=seed, max_steps=max_steps, echo=echo, label=label)
    out.update(max_steps=max_steps, dedup=reports)
    return out


def keys(rows: list[list[int]]) -> set[int]:
    """The origin keys of rows trained as themselves (or copied from them): their content IDs."""
    return {memsinks.content_id(r) for r in rows}
