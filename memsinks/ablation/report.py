"""The before/after report of an ablation: what removing (or deleting) sinks removed and what it kept.

One table, printed and written as JSON. Rows are measurements, columns are models and sinks
modes:

* sinks removed (``removal_report``): the checkpoint with its sinks on (``own``: each sequence
  routed by its training ID; ``mean``: every unit at its expected scale ``p_mem``), with its
  sinks dropped (``drop``), and the shipped model as written to disk (which must equal
  ``drop``; measuring it is the end-to-end check). Rows: held-out perplexity, extraction on
  the member set, membership-inference AUC (members against held-out text) and canary
  exposure; below the table, the shipped model's parameter count and size on disk.
* targeted deletion (``deletion_report``): the same modes before and after, with extraction
  split into the deleted documents and the other members.

The measurements are ``memsinks.probes``; this module only chooses what to run them on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from torch import nn
from tqdm.auto import tqdm

import memsinks
from memsinks.ablation.sequences import SequenceSet
from memsinks.probes._common import sequence_id_list


@dataclass
class ReportData:
    """What the report measures on; any part may be missing (its rows are then left out).

    Attributes:
        heldout: held-out token windows (perplexity, and the non-members of membership inference).
        members: sequences trained on, with their training IDs (extraction, membership inference).
        canaries: planted canaries as texts, with their training IDs (exposure); the secret of
            each is the last match of ``canary_pattern``, its space ``canary_alphabet`` per character.
        tokenizer: the checkpoint's tokenizer (exposure scores candidate texts).
        prefix_len, suffix_len: extraction prompts the first ``prefix_len`` tokens and compares
            the next ``suffix_len``.
        canary_samples: candidates sampled per canary when the secret's space is too large to
            enumerate (``memsinks.probes.canary_exposure``'s ``num_samples``).
    """

    heldout: list[list[int]] | None = None
    members: SequenceSet | None = None
    canaries: SequenceSet | None = None
    tokenizer: Any = None
    prefix_len: int = 32
    suffix_len: int = 32
    batch_size: int = 32
    pad_token_id: int = 0
    canary_pattern: str = r"\d+"
    canary_alphabet: str = "0123456789"
    canary_samples: int = 10_000

    def heldout_ids(self) -> list[int]:
        return [memsinks.content_id(s) for s in self.heldout or []]


@dataclass
class ReportRow:
    metric: str
    values: dict[str, float | None]
    group: str = ""


@dataclass
class AblationReport:
    """A table of measurements (rows) under models and sinks modes (columns), plus facts about the models."""

    title: str
    columns: list[str]
    rows: list[ReportRow] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def value(self, metric: str, column: str, group: str = "") -> float | None:
        for row in self.rows:
            if row.metric == metric and row.group == group:
                return row.values.get(column)
        raise KeyError(f"The report has no row {metric!r} (group {group!r}).")

    def to_dict(self) -> dict:
        return {
            "title": self.title,
            "columns": self.columns,
            "rows": [{"metric": r.metric, "group": r.group, "values": r.values} for r in self.rows],
            "info": self.info,
        }

    def format_table(self) -> str:
        labels = [f"{r.metric} [{r.group}]" if r.group else r.metric for r in self.rows]
        w0 = max([len(x) for x in labels] + [28])
        widths = [max(len(c), 9) for c in self.columns]
        head = f"{'':<{w0}} | " + " | ".join(f"{c:>{w}}" for c, w in zip(self.columns, widths))
        lines = [self.title, "", head, "-" * len(head)]
        for label, row in zip(labels, self.rows):
            cells = [_fmt(row.values.get(c), w) for c, w in zip(self.columns, widths)]
            lines.append(f"{label:<{w0}} | " + " | ".join(cells))
        notes = self.info.get("notes", [])
        if notes:
            lines.append("")
            lines.extend(notes)
        return "\n".join(lines)


def _fmt(value: float | None, width: int) -> str:
    if value is None:
        return f"{'-':>{width}}"
    return f"{value:>{width}.4g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:>{width}.3f}"


# ----------------------------------------------------------------------------------------------- measurements
def _mean_loss(model: nn.Module, sequences: Sequence[Sequence[int]], ids: Sequence[int] | None,
               data: ReportData) -> float:
    """Token-weighted mean NLL (nats/token) of ``sequences``."""
    from memsinks.probes import token_nlls

    nlls = token_nlls(model, sequences, ids, batch_size=data.batch_size, pad_token_id=data.pad_token_id)
    return float(np.concatenate(nlls).mean())


def _nonmembers(data: ReportData) -> tuple[list[list[int]], list[int]] | None:
    """Held-out windows cut to the members' median length, so both sides of the AUC are alike."""
    if not data.heldout or not data.members or not data.members.sequences:
        return None
    length = int(np.median([len(s) for s in data.members.sequences]))
    stream = [t for s in data.heldout for t in s]
    windows = [stream[i:i + length] for i in range(0, len(stream) - length + 1, length)]
    if len(windows) < 2:
        return None
    return windows, [memsinks.content_id(w) for w in windows]


def _measure_all(model: nn.Module, data: ReportData, routed: bool, groups: dict[str, SequenceSet],
                 canary_groups: dict[str, SequenceSet]) -> dict:
    """Every measurement of the report for one model in the sinks mode in force.

    ``routed``: pass training IDs to the model (a model with sinks); False for a plain model.
    ``groups`` / ``canary_groups``: name -> sequences (canaries) whose extraction and loss
    (exposure) are reported separately.
    """
    from memsinks import probes

    out: dict[tuple[str, str], float | None] = {}

    def ids(x: Sequence[int]) -> list[int] | None:
        return list(x) if routed else None

    if data.heldout:
        out[("held-out perplexity", "")] = math.exp(_mean_loss(model, data.heldout, ids(data.heldout_ids()), data))
    for name, seqs in groups.items():
        if not seqs.sequences:
            continue
        ext = probes.extraction(model, seqs.sequences, prefix_len=data.prefix_len, suffix_len=data.suffix_len,
                                sequence_ids=ids(seqs.ids), batch_size=data.batch_size, pad_token_id=data.pad_token_id)
        out[("extraction exact match", name)] = float(ext.exact_match)
        out[("extraction token accuracy", name)] = float(ext.token_accuracy)
        out[("mean loss", name)] = _mean_loss(model, seqs.sequences, ids(seqs.ids), data)
    nonmembers = _nonmembers(data) if "members" in groups else None
    if nonmembers is not None:
        mia = probes.membership_inference(model, data.members.sequences, nonmembers[0],
                                          member_ids=ids(data.members.ids), nonmember_ids=ids(nonmembers[1]),
                                          batch_size=data.batch_size, tokenizer=data.tokenizer,
                                          pad_token_id=data.pad_token_id)
        for key, label in (("loss", "loss"), ("zlib", "zlib"), ("minkprob", "min-k% prob")):
            if key in mia.auc:
                out[(f"membership-inference AUC ({label})", "")] = float(mia.auc[key])
    for name, canaries in canary_groups.items():
        if canaries.ids:
            out[("canary exposure (mean, bits)", name)] = _mean_exposure(model, data, canaries, routed)
    return out


def _mean_exposure(model: nn.Module, data: ReportData, canaries: SequenceSet, routed: bool) -> float:
    """Mean exposure (bits) of the canaries (Carlini et al. 2019), each scored with its training ID when routed."""
    from memsinks import probes

    if data.tokenizer is None:
        raise ValueError("Canary exposure scores candidate texts, so it needs the checkpoint's tokenizer.")
    values = []
    for text, sid in zip(canaries.texts, canaries.ids):
        if text is None:
            raise ValueError(f"{canaries.source}: canaries must be given as text (their secret is found in it).")
        canary = probes.Canary.from_text(text, data.canary_pattern, data.canary_alphabet)
        result = probes.canary_exposure(model, data.tokenizer, canary.prefix, canary.secret, canary.alphabet,
                                        suffix=canary.suffix, sequence_id=sid if routed else None,
                                        num_samples=data.canary_samples, batch_size=max(data.batch_size, 64),
                                        pad_token_id=data.pad_token_id)
        values.append(float(result.exposure))
    return float(np.mean(values))


def _collect(settings: list[tuple[str, nn.Module, str | None]], data: ReportData, groups: dict[str, SequenceSet],
             canary_groups: dict[str, SequenceSet], progress: bool) -> dict[str, dict]:
    """Measure every (column, model, sinks mode or None for a plain model) setting."""
    results = {}
    for column, model, mode in tqdm(settings, desc="report", unit="setting", disable=not progress):
        with memsinks.sinks_mode(model, mode):
            results[column] = _measure_all(model, data, mode is not None, groups, canary_groups)
    return results


def _rows(results: dict[str, dict], columns: list[str]) -> list[ReportRow]:
    keys: list[tuple[str, str]] = []
    for column in columns:
        for key in results[column]:
            if key not in keys:
                keys.append(key)
    return [ReportRow(metric=m, group=g, values={c: results[c].get((m, g)) for c in columns}) for m, g in keys]


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------- reports
REMOVAL_COLUMNS = ["sinks on (own)", "sinks on (mean)", "sinks dropped", "shipped model"]


def removal_report(model: nn.Module, shipped: nn.Module, data: ReportData, export_info: dict | None = None,
                   progress: bool = True) -> AblationReport:
    """Measure the checkpoint with sinks (own, mean, drop) and the shipped plain model side by side."""
    settings = [(REMOVAL_COLUMNS[0], model, "own"), (REMOVAL_COLUMNS[1], model, "mean"),
                (REMOVAL_COLUMNS[2], model, "drop"), (REMOVAL_COLUMNS[3], shipped, None)]
    groups = {"members": data.members} if data.members is not None and data.members.sequences else {}
    canary_groups = {"": data.canaries} if data.canaries is not None else {}
    results = _collect(settings, data, groups, canary_groups, progress)
    info = dict(export_info or {})
    info.update({"parameters_with_sinks": _param_count(model), "parameters_shipped": _param_count(shipped)})
    notes = [f"Shipped model: {info['parameters_shipped']:,} parameters (with sinks: {info['parameters_with_sinks']:,})"
             + (f", {info['size_bytes'] / 2**20:.2f} MiB on disk" if "size_bytes" in info else "") + "."]
    if "out_dir" in info:
        notes.append(f"Written to {info['out_dir']}; its logits match the drop mode: max |diff| "
                     f"{info.get('max_abs_logit_diff', float('nan')):.2g} within a tolerance of "
                     f"{_or_nan(info.get('logit_tolerance')):.2g}, for logits up to "
                     f"{_or_nan(info.get('max_abs_logit')):.3g} in magnitude.")
    info["notes"] = notes
    info.update(_settings_info(data))
    return AblationReport("Sinks removed: before (with sinks) and after (shipped)", REMOVAL_COLUMNS,
                          _rows(results, REMOVAL_COLUMNS), info)


DELETION_COLUMNS = ["before (own)", "after (own)", "before (mean)", "after (mean)", "before (drop)", "after (drop)"]


def deletion_report(before: nn.Module, after: nn.Module, deleted_ids: Sequence[int], data: ReportData,
                    deleted: SequenceSet | None = None, export_info: dict | None = None,
                    progress: bool = True) -> AblationReport:
    """Measure a checkpoint before and after targeted deletion of ``deleted_ids``.

    Extraction and loss are reported for the deleted documents (``deleted``, plus any member
    whose ID was deleted) and for the other members separately.
    """
    gone = set(sequence_id_list(deleted_ids, "deleted_ids"))
    seqs, ids, too_short = [], [], 0
    for source in (deleted, data.members):
        if source is None:
            continue
        for s, i in zip(source.sequences, source.ids):
            if i in gone and i not in ids:
                if len(s) < data.prefix_len + data.suffix_len:  # deleted all the same, but not measurable
                    too_short += 1
                    continue
                seqs.append(s)
                ids.append(i)
    groups = {"deleted": SequenceSet(seqs, ids, "deleted")}
    if data.members is not None:
        groups["other members"] = data.members.subset([i not in gone for i in data.members.ids])
    canary_groups = {}
    if data.canaries is not None:
        canary_groups = {"deleted": data.canaries.subset([i in gone for i in data.canaries.ids]),
                         "other canaries": data.canaries.subset([i not in gone for i in data.canaries.ids])}
    settings = [(c, before if c.startswith("before") else after, c.split("(")[1].rstrip(")")) for c in DELETION_COLUMNS]
    results = _collect(settings, data, groups, canary_groups, progress)
    info = dict(export_info or {})
    info["deleted_ids"] = sorted(gone)
    notes = [f"Deleted {len(gone)} ID(s); documents measured in the deleted group: {len(ids)}."]
    if too_short:
        notes.append(f"{too_short} deleted document(s) are shorter than the extraction prefix + suffix and are not "
                     "measured.")
    if not ids:
        notes.append("No measurable sequence has a deleted ID, so the deleted group has no measurements.")
    if "zeroed_pool_units" in info:
        notes.append(f"Zeroed {info['zeroed_pool_units']} of {info.get('pool_units', '?')} sink pool units.")
    info["notes"] = notes
    info.update(_settings_info(data))
    return AblationReport("Targeted deletion: before and after", DELETION_COLUMNS, _rows(results, DELETION_COLUMNS),
                          info)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _settings_info(data: ReportData) -> dict:
    return {"settings": {"prefix_len": data.prefix_len, "suffix_len": data.suffix_len,
                         "heldout_windows": len(data.heldout or []),
                         "members": len(data.members) if data.members is not None else 0,
                         "canaries": len(data.canaries) if data.canaries is not None else 0}}


def write_json(payload: dict, path: str, force: bool = True) -> None:
    """Write ``payload`` (a report's ``to_dict()`` and friends) to ``path`` as strict JSON (no NaN), atomically.

    ``force`` (the default, for library callers that own ``path``) replaces an existing file;
    the command line passes its ``--force``.
    """
    from memsinks._io import write_json as write_atomically

    write_atomically(path, payload, force=force)
