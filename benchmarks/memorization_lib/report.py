"""Seeds to means and stds, the targets stated plainly, the markdown table and the plots.

Every number in ``results.json`` is the mean over seeds with its sample standard deviation
(ddof=1; 0.0 for a single seed) in a sibling ``"<field>_std"``.
"""

from __future__ import annotations

import math

import numpy as np

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
    """(L_drop(rep) - L_own(rep)) / (L_own(held-out) - L_own(rep)), as ``memsinks.probes.sink_gap`` defines it."""
    if "memsinks_own" not in arms or "memsinks_drop" not in arms:
        return None
    own, drop = arms["memsinks_own"], arms["memsinks_drop"]
    gap = own["heldout_loss"] - own["repeated_loss"]
    return (drop["repeated_loss"] - own["repeated_loss"]) / gap if gap > 1e-3 else None


def summarize_seeds(per_seed: list[dict]) -> dict:
    """Aggregate per-seed results of one scenario: arms, the gap-closed shares, data facts, skipped arms."""
    arms = aggregate([r["arms"] for r in per_seed])
    out = {"arms": arms}
    for name, fn in (("memsinks_gap_closed", gap_closed), ("memsinks_sink_gap_closed", sink_gap_closed)):
        values = [v for v in (fn(r["arms"]) for r in per_seed) if v is not None]
        if values:
            out[name] = float(np.mean(values))
            out[f"{name}_std"] = _std(values)
            out[f"{name}_per_seed"] = values
    for other in ("dedup", "goldfish", "dp"):
        values = [v for v in (gap_closed(r["arms"], arm=other) for r in per_seed) if v is not None]
        if values:
            out.setdefault("gap_closed_by_arm", {})[other] = float(np.mean(values))
    out["data"] = per_seed[0]["data"]
    skipped = {}
    for r in per_seed:
        skipped.update(r.get("skipped", {}))
    if skipped:
        out["skipped_arms"] = skipped
    return out


def _dominates(a: dict, b: dict) -> bool:
    """Whether ``a`` is at least as good as ``b`` on both memorization (gap) and held-out loss, and better on one."""
    no_worse = a["gap"] <= b["gap"] and a["heldout_loss"] <= b["heldout_loss"]
    better = a["gap"] < b["gap"] or a["heldout_loss"] < b["heldout_loss"]
    return no_worse and better


def targets(summary: dict) -> dict:
    """The issue's four targets for memsinks in ``drop`` mode, each with ``met`` and a plain statement."""
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
    ratio = ms["heldout_loss"] / std["heldout_loss"] - 1.0
    out["heldout_loss"] = {
        "met": bool(ratio <= HELDOUT_TOLERANCE), "value": ratio, "threshold": HELDOUT_TOLERANCE,
        "statement": f"memsinks (drop) held-out loss {ms['heldout_loss']:.3f} vs standard {std['heldout_loss']:.3f} "
                     f"({100 * ratio:+.1f}%); target within +{100 * HELDOUT_TOLERANCE:.0f}%: "
                     f"{'MET' if ratio <= HELDOUT_TOLERANCE else 'NOT MET'}.",
    }
    limit = EXTRACTION_FACTOR * std["extraction_exact"]
    met = ms["extraction_exact"] <= limit
    note = "" if std["extraction_exact"] > 0 else " (standard training extracted nothing, so this target says nothing)"
    out["extraction"] = {
        "met": bool(met), "value": ms["extraction_exact"], "threshold": limit,
        "statement": f"memsinks (drop) exact extraction {ms['extraction_exact']:.3f} vs standard "
                     f"{std['extraction_exact']:.3f}; target <= a tenth of standard's ({limit:.3f}): "
                     f"{'MET' if met else 'NOT MET'}{note}.",
    }
    for other in ("dedup", "goldfish"):
        if other not in arms:
            continue
        o = arms[other]
        met = _dominates(ms, o)
        if met:
            verdict = "MET: memsinks has a smaller gap and no higher held-out loss (or vice versa)"
        elif _dominates(o, ms):
            verdict = f"NOT MET: {other} is better on both"
        else:
            verdict = "NOT MET: neither dominates (one is better on memorization, the other on held-out loss)"
        out[f"tradeoff_vs_{other}"] = {
            "met": bool(met),
            "statement": f"trade-off vs {other}: memsinks (drop) gap {ms['gap']:.3f}, held-out {ms['heldout_loss']:.3f}; "
                         f"{other} gap {o['gap']:.3f}, held-out {o['heldout_loss']:.3f}. {verdict}.",
        }
    return out


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


def markdown_report(results: dict) -> str:
    cfg = results["config"]
    lines = ["# Memorization benchmark", "", f"Command: `{cfg['command']}`", "", f"Machine: {results['machine']}", "",
             f"Seeds: {cfg['seeds']} (mean ± sample std over seeds). Losses in nats/token.", ""]
    s1 = results.get("scenario1")
    if s1:
        d = s1["data"]
        lines += ["## Scenario 1: training from scratch", "",
                  f"Text: {d['source']}; {d['unique_windows']} unique windows of {cfg['scenario1']['window']} tokens, "
                  f"{d['repeated_windows']} windows and {d['canaries']} canaries repeated {cfg['scenario1']['repeats']}x "
                  f"({100 * d['repeated_share_of_stream']:.0f}% of the stream), {d['heldout_windows']} held-out windows; "
                  f"{d['max_steps']} optimizer steps per arm.", "",
                  markdown_table(s1["arms"]), ""]
        if "memsinks_gap_closed" in s1:
            lines.append(f"memsinks (drop) closes {100 * s1['memsinks_gap_closed']:.0f}% ± "
                         f"{100 * s1['memsinks_gap_closed_std']:.0f}% of standard training's gap "
                         "(1 - gap(memsinks_drop) / gap(standard)); dropping the sinks closes "
                         f"{100 * s1.get('memsinks_sink_gap_closed', float('nan')):.0f}% of the own-mode gap "
                         "((L_drop(rep) - L_own(rep)) / (L_own(held-out) - L_own(rep))).")
            lines.append("")
        lines += ["### Targets", ""] + [f"- {t['statement']}" for t in s1["targets"].values() if "statement" in t] + [""]
        for arm, why in s1.get("skipped_arms", {}).items():
            lines.append(f"- arm `{arm}` not run: {why}")
        lines += ["", "![scenario 1 trade-off](scenario1_tradeoff.png)", "", "![scenario 1 curves](scenario1_curves.png)",
                  ""]
    s2 = results.get("scenario2")
    if s2:
        d = s2["data"]
        top = str(max(int(g) for g in d["repeat_groups"]))
        lines += ["## Scenario 2: fine-tuning a pretrained model on records with personal data", "",
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
        if "memsinks_gap_closed" in s2:
            lines += [f"memsinks (append, drop) closes {100 * s2['memsinks_gap_closed']:.0f}% ± "
                      f"{100 * s2['memsinks_gap_closed_std']:.0f}% of full fine-tuning's gap on the x{top} records.", ""]
        if s2.get("lora_findings"):
            lines += ["LoRA q/k vs v/o (Savine et al. 2025 report v/o memorizes more):", ""]
            lines += [f"- {x}" for x in s2["lora_findings"]] + [""]
        for arm, why in s2.get("skipped_arms", {}).items():
            lines.append(f"- arm `{arm}` not run: {why}")
        lines += ["", "![scenario 2 trade-off](scenario2_tradeoff.png)", "", "![scenario 2 curves](scenario2_curves.png)",
                  ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plots
def plot_tradeoff(arms: dict, path: str, title: str) -> None:
    """Memorization (exact extraction; gap) against held-out loss, one point per arm with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], "extraction_exact", "exact extraction rate (repeated)"),
                           (axes[1], "gap", "held-out minus repeated loss (nats)")):
        for i, (name, a) in enumerate(arms.items()):
            color = f"C{i % 10}"
            ax.errorbar(a["heldout_loss"], a[key], xerr=a.get("heldout_loss_std", 0), yerr=a.get(f"{key}_std", 0),
                        fmt="o", color=color, capsize=3)
            ax.annotate(name, (a["heldout_loss"], a[key]), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=color)
        ax.set_xlabel("held-out loss (nats/token, lower is better)")
        ax.set_ylabel(label + ", lower is better")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(curves: dict, path: str, title: str) -> None:
    """Per training arm: training loss, and the probe losses (repeated / held-out; drop and own for sinks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(curves)
    cols = min(4, len(names)) or 1
    rows = math.ceil(len(names) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        c = curves[name]
        if c["train_loss"]:
            steps, losses = zip(*c["train_loss"])
            ax.plot(steps, losses, color="0.6", lw=1, label="training loss")
        if c["probe"]:
            keys = [k for k in c["probe"][0] if k != "step"]
            steps = [p["step"] for p in c["probe"]]
            for k in keys:
                style = "-" if k.startswith("repeated") else "--"
                ax.plot(steps, [p[k] for p in c["probe"]], style, lw=1.5, label=k.replace("_plain", ""))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
