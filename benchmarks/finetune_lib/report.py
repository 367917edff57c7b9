"""Summaries over seeds, the targets of the fine-tuning issue checked in plain words, ``results.md`` and the plot."""

from __future__ import annotations

import math

import numpy as np

#: per arm and mode, the fields summarised over seeds (mean and sample std)
FIELDS = ("secret_loss", "heldout_secret_loss", "gap", "gap_closed", "extraction_exact", "heldout_task_loss",
          "general_loss", "exposure_bits", "tokens_per_s", "step_time_ratio", "trained_secret_loss",
          "trained_extraction_exact")


def members_line(settings) -> str:
    """What the groups hold, in words, for the report's header."""
    if settings.members == "people":
        return (f"Members: people, {settings.groups} (records per person: people), each person's secret in that many "
                "distinct records trained on once and scored on one more record of theirs never trained on; sequence "
                "IDs keyed by the person")
    return f"Records: groups {settings.groups} (repeats: count)"


def row_name(arm: str, mode: str | None) -> str:
    return arm if mode is None else f"{arm}/{mode}"


def add_gap_closed(per_seed: dict) -> None:
    """Fill in, per seed, ``gap_closed``: 1 - gap / standard's gap (the share of the secret gap removed)."""
    for seed_rows in per_seed.values():
        std = seed_rows.get("standard")
        if std is None:
            continue
        for row in seed_rows.values():
            row["gap_closed"] = 1.0 - row["gap"] / std["gap"] if std["gap"] > 0 else float("nan")


def summarise(per_seed: dict) -> dict:
    """{row: {field: mean, field_std: sample std}} over the seeds that have the row."""
    rows: dict[str, dict[str, list]] = {}
    for seed_rows in per_seed.values():
        for name, row in seed_rows.items():
            for f in FIELDS:
                if f in row and row[f] is not None and not (isinstance(row[f], float) and math.isnan(row[f])):
                    rows.setdefault(name, {}).setdefault(f, []).append(float(row[f]))
    out = {}
    for name, fields in rows.items():
        out[name] = {}
        for f, values in fields.items():
            out[name][f] = float(np.mean(values))
            out[name][f + "_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out[name]["seeds"] = max(len(values) for values in fields.values())  # the seeds that ran the arm
    return out


def targets(summary: dict, per_seed: dict | None = None) -> list[str]:
    """The issue's targets, each stated as met or missed with the numbers. With ``per_seed``, an arm run on fewer
    seeds than standard is compared with standard's mean over the same seeds, not over all of them."""
    lines = []
    if summary.get("standard") is None:
        return ["no standard arm: the targets are relative to it"]

    def reference(row_name: str) -> dict:
        if per_seed is None:
            return summary["standard"]
        seeds = [s for s, rows in per_seed.items() if row_name in rows and "standard" in rows]
        if not seeds:
            return summary["standard"]
        return summarise({s: {"standard": per_seed[s]["standard"]} for s in seeds})["standard"]

    def check(row_name: str, closed_min: float, extraction_max: float, label: str, ratio_max: float):
        row = summary.get(row_name)
        if row is None:
            lines.append(f"{label}: not run ({row_name})")
            return
        std = reference(row_name)
        task_ok = row["heldout_task_loss"] <= 1.05 * std["heldout_task_loss"]
        closed = row.get("gap_closed")  # absent where standard's gap is not positive on any seed
        parts = [
            f"gap closed: not defined (standard's gap {std['gap']:.3f} <= 0: nothing memorized to remove)"
            if closed is None else
            f"gap closed {100 * closed:.0f}% (target >= {100 * closed_min:.0f}%: {'met' if closed >= closed_min else 'missed'})",
            f"extraction {100 * row['extraction_exact']:.0f}% vs standard {100 * std['extraction_exact']:.0f}% "
            f"(target <= {extraction_max:.0%} of standard's: "
            f"{'met' if row['extraction_exact'] <= extraction_max * std['extraction_exact'] + 1e-12 else 'missed'})",
            f"held-out task loss {row['heldout_task_loss']:.3f} vs {std['heldout_task_loss']:.3f} (within 5%: "
            f"{'met' if task_ok else 'missed'})",
        ]
        ratio = row.get("step_time_ratio")
        parts.append(f"step time (target <= {ratio_max}x): not measured" if ratio is None else
                     f"step time {ratio:.2f}x (target <= {ratio_max}x: {'met' if ratio <= ratio_max else 'missed'})")
        if "general_loss" in row:
            parts.append(f"general-text loss {row['general_loss']:.3f} vs {std['general_loss']:.3f} "
                         f"({'no worse: met' if row['general_loss'] <= std['general_loss'] else 'worse: missed'})")
        lines.append(f"{label}: " + "; ".join(parts))

    check("sinks_defaults/drop", 0.90, 0.10, "defaults, no labels", 1.3)
    check("sinks_private/drop", 0.95, 0.0, "with private_mask", 2.0)
    placebo, drop = summary.get("sinks_defaults/placebo"), summary.get("sinks_defaults/drop")
    if placebo and drop:
        ok = placebo["secret_loss"] >= drop["secret_loss"]
        lines.append(f"placebo: secrets' loss in another record's sinks {placebo['secret_loss']:.3f} vs dropped "
                     f"{drop['secret_loss']:.3f} (no better than drop: {'met' if ok else 'missed'})")
    return lines


def _fmt(row: dict, f: str, digits: int = 3, pct: bool = False) -> str:
    if f not in row:
        return "–"
    scale = 100 if pct else 1
    suffix = "%" if pct else ""
    return f"{scale * row[f]:.{0 if pct else digits}f}{suffix} ± {scale * row[f + '_std']:.{0 if pct else digits}f}{suffix}"


def markdown(summary: dict, config: dict, header: list[str], target_lines: list[str], coverage: dict | None,
             found: dict | None = None) -> str:
    cols = [("secret_loss", "members' secret loss", 3, False), ("heldout_secret_loss", "held-out secret loss", 3, False),
            ("gap_closed", "gap closed", 0, True), ("extraction_exact", "extraction", 0, True),
            ("heldout_task_loss", "held-out task loss", 3, False), ("general_loss", "general-text loss", 3, False),
            ("exposure_bits", "exposure (bits)", 1, False), ("step_time_ratio", "step time", 2, False)]
    if any("trained_secret_loss" in row for row in summary.values()):  # people as members: the verbatim case too
        cols[2:2] = [("trained_secret_loss", "secret loss on a trained record", 3, False),
                     ("trained_extraction_exact", "extraction from a trained record", 0, True)]
    lines = header + ["", "| arm | seeds | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for name, row in summary.items():
        lines.append(f"| {name} | {row['seeds']} | " + " | ".join(_fmt(row, f, d, p) for f, _, d, p in cols) + " |")
    lines += ["", "Targets:", ""] + [f"- {t}" for t in target_lines]
    if coverage:
        lines += ["", f"`mark_private_spans` with the default patterns found {100 * coverage['recall']:.1f}% of the "
                      f"secrets' tokens; {100 * coverage['precision']:.1f}% of the tokens it marked are secrets' "
                      "(the rest: other numbers such as dates and amounts)."]
    if found:
        lines += ["", "Deduplication of the training rows would remove: " + "; ".join(
            f"seed {seed}: exact {f['exact_removed']}, MinHash (word 5-grams, Jaccard 0.8) {f['minhash_removed']} "
            f"of {f['rows']}" for seed, f in found.items()) + "."]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: str) -> None:
    """Memorization removed (gap closed) against the task learned (held-out task loss), one point per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, row in summary.items():
        if "gap_closed" not in row or "/own" in name or "/placebo" in name:
            continue
        ax.errorbar(row["heldout_task_loss"], 100 * row["gap_closed"], xerr=row["heldout_task_loss_std"],
                    yerr=100 * row["gap_closed_std"], fmt="o", capsize=3)
        ax.annotate(name, (row["heldout_task_loss"], 100 * row["gap_closed"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set_xlabel("held-out records' task loss (nats/token; lower = task learned)")
    ax.set_ylabel("members' secret gap closed vs full fine-tuning (%)")
    ax.set_title("Fine-tuning on records with secrets: memorization removed vs task learned")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
