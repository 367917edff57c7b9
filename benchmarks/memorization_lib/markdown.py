"""The benchmark's tables in markdown: one section per scenario, with targets, dedup findings and plots."""

from __future__ import annotations

TABLE_FIELDS = [
    ("heldout_loss", "held-out loss", "{:.3f}"),
    ("repeated_loss", "repeated loss", "{:.3f}"),
    ("gap", "gap", "{:.3f}"),
    ("extraction_exact", "exact extraction", "{:.2f}"),
    ("token_accuracy", "token acc.", "{:.2f}"),
    ("mia_auc", "MIA AUC", "{:.2f}"),
    ("canary_exposure", "exposure (bits)", "{:.1f}"),
    ("tokens_per_s", "tokens/s", "{:,.0f}"),
]
SCENARIO3_FIELDS = [("general_heldout_loss", "general held-out loss", "{:.3f}"),
                    ("domain_heldout_loss", "domain held-out loss", "{:.3f}")] + TABLE_FIELDS[1:]
DEDUP_NAMES = {"dedup": "exact", "dedup_minhash": "MinHash LSH"}


def _cell(arm: dict, key: str, fmt: str) -> str:
    if key not in arm:
        return "n/a"
    value, std = arm[key], arm.get(f"{key}_std", 0.0)
    return f"{fmt.format(value)} ± {fmt.format(std)}"


def markdown_table(arms: dict, fields=TABLE_FIELDS) -> str:
    head = "| arm | " + " | ".join(label for _, label, _ in fields) + " |"
    rule = "|---|" + "---|" * len(fields)
    rows = [f"| {name} | " + " | ".join(_cell(a, k, f) for k, _, f in fields) + " |" for name, a in arms.items()]
    return "\n".join([head, rule] + rows)


def by_repeats_table(arms: dict, field: str, fmt: str) -> str:
    groups = sorted({int(g) for a in arms.values() for g in a.get("by_repeats", {})})
    head = "| arm | " + " | ".join(f"x{g}" for g in groups) + " |"
    rule = "|---|" + "---|" * len(groups)
    rows = []
    for name, a in arms.items():
        br = a.get("by_repeats", {})
        rows.append(f"| {name} | " + " | ".join(_cell(br[str(g)], field, fmt) if str(g) in br else "n/a"
                                               for g in groups) + " |")
    return "\n".join([head, rule] + rows)


def dedup_table(dedup: dict) -> str:
    """What each dedup found, per part of the corpus (means over seeds)."""
    head = ("| dedup | part | rows | redundant copies | found | missed | distinct rows merged | "
            "copies left per sequence |")
    rows = [head, "|---|---|---|---|---|---|---|---|"]
    for name, parts in dedup.items():
        for part, r in parts.items():
            if not isinstance(r, dict):
                continue
            rows.append(f"| {DEDUP_NAMES.get(name, name)} | {part} | {r['rows']:.0f} | {r['redundant_copies']:.0f} | "
                        f"{r['found']:.0f} | {r['missed']:.0f} | {r['false_merges']:.0f} | "
                        f"{r['copies_left_per_origin']:.1f} |")
    return "\n".join(rows)


def _targets(summary: dict) -> list[str]:
    lines = ["### Targets", ""] + [f"- {t['statement']}" for t in summary["targets"].values() if "statement" in t]
    return lines + [f"- arm `{arm}` not run: {why}" for arm, why in summary.get("skipped_arms", {}).items()] + [""]


def _gap_line(summary: dict, what: str) -> list[str]:
    if summary.get("memsinks_gap_closed") is None:
        return []
    return [f"memsinks (drop) closes {100 * summary['memsinks_gap_closed']:.0f}% ± "
            f"{100 * summary['memsinks_gap_closed_std']:.0f}% of standard training's gap {what}"
            "(1 - gap(memsinks_drop) / gap(standard)); dropping the sinks closes "
            f"{100 * summary.get('memsinks_sink_gap_closed', float('nan')):.0f}% of the own-mode gap "
            "((L_drop(rep) - L_own(rep)) / (L_own(held-out) - L_own(rep))).", ""]


def _figures(stem: str, title: str) -> list[str]:
    return [f"![{title} trade-off]({stem}_tradeoff.png)", "", f"![{title} curves]({stem}_curves.png)", ""]


def _scenario1(s1: dict, cfg: dict) -> list[str]:
    d = s1["data"]
    return ["## Scenario 1: training from scratch", "",
            f"Text: {d['source']}; {d['unique_windows']} unique windows of {cfg['scenario1']['window']} tokens, "
            f"{d['repeated_windows']} windows and {d['canaries']} canaries repeated {cfg['scenario1']['repeats']}x "
            f"({100 * d['repeated_share_of_stream']:.0f}% of the stream), {d['heldout_windows']} held-out windows; "
            f"{d['max_steps']} optimizer steps per arm.", "",
            markdown_table(s1["arms"]), ""] + _gap_line(s1, "") + _targets(s1) + _figures("scenario1", "scenario 1")


def _scenario2(s2: dict) -> list[str]:
    d = s2["data"]
    top = str(max(int(g) for g in d["repeat_groups"]))
    lines = ["## Scenario 2: fine-tuning a pretrained model on records with personal data", "",
             f"Base: {s2['base']}. Fine-tuning set: {d['background_records']} records once and, per group, "
             + ", ".join(f"{k} records x{n}" for n, k in d["repeat_groups"].items())
             + f"; {d['heldout_records']} held-out records; {d['max_steps']} optimizer steps per arm. "
             + (f"Before fine-tuning the base model has held-out record loss {b['heldout_loss']:.3f} and "
                f"pretraining-text loss {b['general_loss']:.3f}. " if (b := s2.get("base_model_metrics")) else "")
             + f"Headline columns use the x{top} group; the secret is each record's 10-digit phone number "
             "(extraction: greedy decoding after the record's text up to it; exposure: among 10^10 numbers, "
             "skew-normal estimate). MIA AUC uses the base model as reference.", "",
             markdown_table(s2["arms"], TABLE_FIELDS[:2] + [("general_loss", "pretraining-text loss", "{:.3f}")]
                            + TABLE_FIELDS[2:] + [("memorized_bits", "memorized bits", "{:.1f}")]), "",
             "Exact phone extraction by repetition count:", "", by_repeats_table(s2["arms"], "extraction_exact", "{:.2f}"),
             "", "Reference-model MIA AUC by repetition count:", "", by_repeats_table(s2["arms"], "mia_auc", "{:.2f}"),
             ""]
    if s2.get("memsinks_gap_closed") is not None:
        lines += [f"memsinks (append, drop) closes {100 * s2['memsinks_gap_closed']:.0f}% ± "
                  f"{100 * s2['memsinks_gap_closed_std']:.0f}% of full fine-tuning's gap on the x{top} records.", ""]
    if s2.get("lora_findings"):
        lines += ["LoRA q/k vs v/o (Savine et al. 2025 report v/o memorizes more):", ""]
        lines += [f"- {x}" for x in s2["lora_findings"]] + [""]
    lines += [f"- arm `{arm}` not run: {why}" for arm, why in s2.get("skipped_arms", {}).items()]
    return lines + [""] + _figures("scenario2", "scenario 2")


def _scenario3(s3: dict, cfg: dict) -> list[str]:
    d, c = s3["data"], cfg["scenario3"]
    return ["## Scenario 3: a second domain seen only as repeated sequences", "",
            f"General text: {d['source']}; {d['general_windows']} unique windows of {c['window']} tokens once. "
            f"Second domain: {d['domain_sequences']} stories (memsinks.corpus' generator, "
            f"{d['domain_tokens_mean']:.0f} tokens on average) and {d['canaries']} canaries, each repeated "
            f"{d['repeats']}x ({100 * d['repeated_share_of_stream_tokens']:.0f}% of the stream's tokens). Held out: "
            f"{d['general_heldout_windows']} general windows and {d['domain_heldout_sequences']} stories; memorization "
            f"is scored on {d['repeated_scored']} of the repeated stories, and the gap is their loss against the "
            f"held-out stories'. {d['max_steps']} optimizer steps per arm.", "",
            markdown_table(s3["arms"], SCENARIO3_FIELDS), ""] + _gap_line(s3, "on the repeated stories ") + [
            "What each dedup removed (means over seeds):", "", dedup_table(s3.get("dedup", {})), ""] + _targets(s3) + [
            ""] + _figures("scenario3", "scenario 3")


def _near_duplicates(summary: dict, scenario: str, fields, cfg: dict) -> list[str]:
    d, m = summary["data"], cfg[f"scenario{scenario}"]["minhash"]
    one, many = ("story", "stories") if scenario == "3" else ("window", "windows")
    keys = {"memsinks": f"by the {one} it came from", "memsinks_content_ids": "by its own tokens (content ID)",
            "memsinks_minhash_ids": "by its MinHash cluster"}
    arms = cfg[f"scenario{scenario}"]["near_duplicate_arms"]
    keyed = "; ".join(f"`{arm}` keys each copy {how}" for arm, how in keys.items() if arm in arms)
    return [f"## Scenario {scenario}, near-duplicate variant", "",
            f"The same corpus with no canaries, and instead of exact repeats {d['copies']} near-duplicate copies of "
            f"each repeated {one}, each with {100 * d['near_duplicate_rate']:g}% of its tokens (at least one; "
            f"{d['edits_per_copy']:.1f} on average) swapped for others of the same kind (digits and capitalized words "
            f"first: names, numbers, dates). A copy's word {m['ngram']}-gram shingles have a mean Jaccard similarity "
            f"of {d['shingle_jaccard_to_source']:.2f} with its source's (seed {cfg['seeds'][0]}; MinHash dedup joins "
            f"rows estimated above {m['threshold']}). Memorization is scored on the {many} the copies came from; "
            f"{keyed}. {d['max_steps']} optimizer steps per arm.", "",
            markdown_table(summary["arms"], fields), "", "What each dedup removed (means over seeds):", "",
            dedup_table(summary.get("dedup", {})), ""] + [f"- {x}" for x in summary.get("findings", [])] + [
            ""] + _figures(f"scenario{scenario}_near_duplicates", f"scenario {scenario} near-duplicates")


def markdown_report(results: dict) -> str:
    cfg = results["config"]
    lines = ["# Memorization benchmark", "", f"Command: `{cfg['command']}`", "", f"Machine: {results['machine']}", "",
             f"Seeds: {cfg['seeds']} (mean ± sample std over seeds). Losses in nats/token.", ""]
    if "scenario1" in results:
        lines += _scenario1(results["scenario1"], cfg)
    if "scenario1_near_duplicates" in results:
        lines += _near_duplicates(results["scenario1_near_duplicates"], "1", TABLE_FIELDS, cfg)
    if "scenario2" in results:
        lines += _scenario2(results["scenario2"])
    if "scenario3" in results:
        lines += _scenario3(results["scenario3"], cfg)
    if "scenario3_near_duplicates" in results:
        lines += _near_duplicates(results["scenario3_near_duplicates"], "3", SCENARIO3_FIELDS, cfg)
    return "\n".join(lines)
