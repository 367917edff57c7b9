"""Seeds to means and stds, the share of the gap each arm closes, and the targets and findings stated plainly.

Every number in ``results.json`` is the mean over seeds with its sample standard deviation
(``ddof=1``; 0.0 for a single seed) in a sibling ``"<field>_std"``. ``markdown`` writes the
tables and ``plots`` the figures.
"""

from __future__ import annotations

import numpy as np

GAP_TARGET = 0.75
HELDOUT_TOLERANCE = 0.02
EXTRACTION_FACTOR = 0.1


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def aggregate(records: list[dict]) -> dict:
    """Mean over the records of every number (with a ``<key>_std`` sibling), recursing into dicts.

    Keys missing from some records are aggregated over the records that have them; non-numbers
    are taken from the first record that has them.
    """
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    out: dict = {}
    for k in keys:
        values = [r[k] for r in records if k in r]
        if all(isinstance(v, dict) for v in values):
            out[k] = aggregate(values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None for v in values):
            out[k] = float(np.mean(values))
            out[f"{k}_std"] = _std(values)
        else:
            out[k] = values[0]
    return out


def gap_closed(arms: dict, reference: str = "standard", arm: str = "memsinks_drop") -> float | None:
    """1 - gap(arm) / gap(reference): the share of the reference's repeated-vs-held-out gap that ``arm`` closes."""
    if reference not in arms or arm not in arms or arms[reference]["gap"] <= 0:
        return None
    return 1.0 - arms[arm]["gap"] / arms[reference]["gap"]


def sink_gap_closed(arms: dict) -> float | None:
    """(L_drop(rep) - L_own(rep)) / (L_own(held-out) - L_own(rep)), as ``memsinks.probes.sink_gap`` defines it
    (``gap`` is held-out minus repeated loss, so the denominator is own mode's gap)."""
    if "memsinks_own" not in arms or "memsinks_drop" not in arms:
        return None
    own, drop = arms["memsinks_own"], arms["memsinks_drop"]
    return (drop["repeated_loss"] - own["repeated_loss"]) / own["gap"] if own["gap"] > 1e-3 else None


def summarize_seeds(per_seed: list[dict]) -> dict:
    """Aggregate per-seed results of one scenario: arms, the gap-closed shares, data facts, dedup reports
    (mean over seeds), skipped arms. ``memsinks_gap_closed`` is always there: None when no seed defines it."""
    arms = aggregate([r["arms"] for r in per_seed])
    out = {"arms": arms}
    for name, fn in (("memsinks_gap_closed", gap_closed), ("memsinks_sink_gap_closed", sink_gap_closed)):
        values = [v for v in (fn(r["arms"]) for r in per_seed) if v is not None]
        if values:
            out[name] = float(np.mean(values))
            out[f"{name}_std"] = _std(values)
            out[f"{name}_per_seed"] = values
        elif name == "memsinks_gap_closed":
            out[name] = None  # no memsinks arm, or standard training has no positive gap to close
    for other in arms:
        if other in ("standard", "memsinks_drop") or other.endswith("_std"):
            continue
        values = [v for v in (gap_closed(r["arms"], arm=other) for r in per_seed) if v is not None]
        if values:
            out.setdefault("gap_closed_by_arm", {})[other] = float(np.mean(values))
    out["data"] = {k: v for k, v in per_seed[0]["data"].items() if k != "dedup"}
    if "dedup" in per_seed[0]["data"]:
        out["dedup"] = aggregate([r["data"]["dedup"] for r in per_seed])
    skipped = {}
    for r in per_seed:
        skipped.update(r.get("skipped", {}))
    if skipped:
        out["skipped_arms"] = skipped
    return out


def _dominates(a: dict, b: dict, heldout: str = "heldout_loss") -> bool:
    """Whether ``a`` is at least as good as ``b`` on both memorization (gap) and held-out loss, and better on one."""
    no_worse = a["gap"] <= b["gap"] and a[heldout] <= b[heldout]
    better = a["gap"] < b["gap"] or a[heldout] < b[heldout]
    return no_worse and better


def _within(ms: dict, std: dict, key: str, label: str) -> dict:
    ratio = ms[key] / std[key] - 1.0
    return {"met": bool(ratio <= HELDOUT_TOLERANCE), "value": ratio, "threshold": HELDOUT_TOLERANCE,
            "statement": f"memsinks (drop) {label} {ms[key]:.3f} vs standard {std[key]:.3f} ({100 * ratio:+.1f}%); "
                         f"target within +{100 * HELDOUT_TOLERANCE:.0f}%: "
                         f"{'MET' if ratio <= HELDOUT_TOLERANCE else 'NOT MET'}."}


def targets(summary: dict, heldout: str = "heldout_loss", heldout_label: str = "held-out loss") -> dict:
    """The targets for memsinks in ``drop`` mode, each with ``met`` and a plain statement: the share of the
    gap closed, the held-out loss (``heldout``) against standard's, extraction against standard's, and
    the trade-off (gap vs ``heldout``) against each dedup and goldfish."""
    arms = summary["arms"]
    out: dict = {}
    if "memsinks_drop" not in arms or "standard" not in arms:
        return {"note": "memsinks_drop or standard was not run; no target can be evaluated."}
    ms, std = arms["memsinks_drop"], arms["standard"]
    closed = summary.get("memsinks_gap_closed")
    if closed is not None:
        out["gap_closed"] = {
            "met": bool(closed >= GAP_TARGET), "value": closed, "threshold": GAP_TARGET,
            "statement": f"memsinks (drop) closes {100 * closed:.0f}% (± {100 * summary['memsinks_gap_closed_std']:.0f}) "
                         f"of standard training's repeated-vs-held-out loss gap; target >= {100 * GAP_TARGET:.0f}%: "
                         f"{'MET' if closed >= GAP_TARGET else 'NOT MET'}.",
        }
    out["heldout_loss"] = _within(ms, std, heldout, heldout_label)
    limit = EXTRACTION_FACTOR * std["extraction_exact"]
    met = ms["extraction_exact"] <= limit
    note = "" if std["extraction_exact"] > 0 else " (standard training extracted nothing, so this target says nothing)"
    out["extraction"] = {
        "met": bool(met), "value": ms["extraction_exact"], "threshold": limit,
        "statement": f"memsinks (drop) exact extraction {ms['extraction_exact']:.3f} vs standard "
                     f"{std['extraction_exact']:.3f}; target <= a tenth of standard's ({limit:.3f}): "
                     f"{'MET' if met else 'NOT MET'}{note}.",
    }
    for other in ("dedup", "dedup_minhash", "goldfish"):
        if other not in arms:
            continue
        o = arms[other]
        met = _dominates(ms, o, heldout)
        if met:
            verdict = "MET: memsinks has a smaller gap and no higher held-out loss (or vice versa)"
        elif _dominates(o, ms, heldout):
            verdict = f"NOT MET: {other} is better on both"
        else:
            verdict = f"NOT MET: neither dominates (one is better on memorization, the other on {heldout_label})"
        out[f"tradeoff_vs_{other}"] = {
            "met": bool(met),
            "statement": f"trade-off vs {other}: memsinks (drop) gap {ms['gap']:.3f}, {heldout_label} {ms[heldout]:.3f}; "
                         f"{other} gap {o['gap']:.3f}, {heldout_label} {o[heldout]:.3f}. {verdict}.",
        }
    return out


def scenario3_targets(summary: dict) -> dict:
    """Scenario 3's targets: those of ``targets`` on the domain's held-out loss, the domain's held-out loss
    below exact dedup's, and the general text's held-out loss within 2% of standard's."""
    out = targets(summary, "domain_heldout_loss", "domain held-out loss")
    arms = summary["arms"]
    if "note" in out:
        return out
    out["domain_heldout_loss"] = out.pop("heldout_loss")
    ms = arms["memsinks_drop"]
    if "dedup" in arms:
        d = arms["dedup"]
        met = ms["domain_heldout_loss"] < d["domain_heldout_loss"]
        out["domain_vs_dedup"] = {
            "met": bool(met), "value": ms["domain_heldout_loss"], "threshold": d["domain_heldout_loss"],
            "statement": f"memsinks (drop) domain held-out loss {ms['domain_heldout_loss']:.3f} vs dedup "
                         f"{d['domain_heldout_loss']:.3f}; target below dedup's: {'MET' if met else 'NOT MET'}."}
    out["general_heldout_loss"] = _within(ms, arms["standard"], "general_heldout_loss", "general held-out loss")
    return out


def near_duplicate_findings(summary: dict, part: str) -> list[str]:
    """What each dedup found of the near-duplicate copies (of the corpus part ``part``) and what each arm
    keeps of standard training's gap, in plain sentences."""
    lines = []
    for name, label in (("dedup", "exact dedup"), ("dedup_minhash", "MinHash-LSH dedup")):
        r = summary.get("dedup", {}).get(name, {}).get(part)
        if r:
            lines.append(f"{label} removed {r['found']:.0f} of {r['redundant_copies']:.0f} redundant copies "
                         f"({100 * r['found'] / max(r['redundant_copies'], 1):.0f}%), leaving "
                         f"{r['copies_left_per_origin']:.1f} copies of each repeated sequence; it merged "
                         f"{r['false_merges']:.0f} distinct rows of this part by mistake.")
    closed = summary.get("gap_closed_by_arm", {})
    names = {"dedup": "exact dedup", "dedup_minhash": "MinHash-LSH dedup",
             "memsinks_content_ids_drop": "memsinks keyed by each copy's content ID (drop)",
             "memsinks_minhash_ids_drop": "memsinks keyed by MinHash cluster (drop)"}
    if summary.get("memsinks_gap_closed") is not None:
        lines.append("memsinks keyed by the source of each copy (drop) closes "
                     f"{100 * summary['memsinks_gap_closed']:.0f}% ± {100 * summary['memsinks_gap_closed_std']:.0f}% "
                     "of standard training's gap.")
    for arm, label in names.items():
        if arm in closed:
            lines.append(f"{label} closes {100 * closed[arm]:.0f}% of standard training's gap.")
    return lines


def lora_findings(arms: dict, ranks, top: str) -> list[str]:
    """Whether v/o adapters memorize more than q/k ones here (Savine et al. 2025), rank by rank."""
    lines = []
    for r in ranks:
        qk, vo = arms.get(f"lora_qk_r{r}"), arms.get(f"lora_vo_r{r}")
        if not qk or not vo:
            continue
        more = vo["mia_auc"] > qk["mia_auc"]
        lines.append(f"rank {r}: reference-model MIA AUC on the x{top} records v/o {vo['mia_auc']:.2f} vs q/k "
                     f"{qk['mia_auc']:.2f} (exposure {vo['canary_exposure']:.1f} vs {qk['canary_exposure']:.1f} bits): "
                     f"v/o memorizes {'more' if more else 'not more'} than q/k.")
    return lines


