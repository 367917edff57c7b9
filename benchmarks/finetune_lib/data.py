"""One seed's fine-tuning data: record groups repeated 1, 4, 16 times, background records, held-out records,
and windows of general text the base model should keep knowing.

The members of a group are records trained on as exact copies (``members="copies"``), or people
whose secret recurs in that many distinct records (``members="people"``), each scored on one more
record of theirs that is never trained on: what a model that learned the person's secret fills in."""

from __future__ import annotations

import random
from dataclasses import dataclass

from memsinks.data import key_id

from .records import EncodedRecord, encode, make_people, make_records


@dataclass
class FinetuneData:
    """``groups``: repeat count -> the records scored for the group's members (with copies, the records trained on
    that many times; with people, one untrained record per person); ``trained``: with people, repeat count -> the
    distinct records trained on once each (None with copies); ``background`` once; ``heldout`` never.
    ``general``: token windows of general text (not trained on)."""

    groups: dict[int, list[EncodedRecord]]
    background: list[EncodedRecord]
    heldout: list[EncodedRecord]
    general: list[list[int]]
    seed: int
    trained: dict[int, list[EncodedRecord]] | None = None

    def record_id(self, record: EncodedRecord, per_record: bool = False) -> int:
        """The record's sequence ID: keyed by the person it is about (every copy and every record of a person shares
        the sinks), or by its own text with ``per_record`` (what content IDs give)."""
        return key_id(record.record.text if per_record or not record.record.owner else record.record.owner)

    def training_rows(self) -> list[EncodedRecord]:
        """Every training row (repeated records once per repetition; people's records once each), shuffled with the
        seed."""
        rows = list(self.background)
        for repeats, records in self.groups.items():
            rows += self.trained[repeats] if self.trained is not None else records * repeats
        random.Random(self.seed).shuffle(rows)
        return rows


def general_windows(text: str, tokenizer, n: int, window: int, seed: int) -> list[list[int]]:
    """``n`` token windows of ``window`` tokens drawn from ``text`` (general text the base model knows)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < window * (n + 1):
        raise ValueError(f"The general text has {len(ids)} tokens; {n} windows of {window} need more.")
    starts = random.Random(seed).sample(range(0, len(ids) - window, window), n)
    return [ids[s:s + window] for s in starts]


def build(tokenizer, settings, general_text: str, seed: int) -> FinetuneData:
    """The records of one seed (drawn from ``seed``; distinct records in every role) and the general windows."""
    if settings.members == "people":
        return _build_people(tokenizer, settings, general_text, seed)
    sizes = [settings.groups[r] for r in sorted(settings.groups)]
    total = sum(sizes) + settings.n_background + settings.n_heldout
    records = [encode(r, tokenizer) for r in make_records(total, seed=10_000 + seed)]
    random.Random(seed).shuffle(records)
    groups, at = {}, 0
    for repeats in sorted(settings.groups):
        groups[repeats] = records[at:at + settings.groups[repeats]]
        at += settings.groups[repeats]
    background = records[at:at + settings.n_background]
    heldout = records[at + settings.n_background:]
    general = general_windows(general_text, tokenizer, settings.n_general, settings.general_window, seed)
    return FinetuneData(groups=groups, background=background, heldout=heldout, general=general, seed=seed)


def _build_people(tokenizer, settings, general_text: str, seed: int) -> FinetuneData:
    """Group ``r``'s members are people with ``r`` trained records and one scored record each; background and held-out
    records are one record each of other people."""
    sizes = [r + 1 for r in sorted(settings.groups) for _ in range(settings.groups[r])]
    sizes += [1] * (settings.n_background + settings.n_heldout)
    people = [[encode(r, tokenizer) for r in person] for person in make_people(sizes, seed=20_000 + seed)]
    groups, trained, at = {}, {}, 0
    for repeats in sorted(settings.groups):
        members = people[at:at + settings.groups[repeats]]
        groups[repeats] = [person[-1] for person in members]
        trained[repeats] = [record for person in members for record in person[:-1]]
        at += settings.groups[repeats]
    singles = [person[0] for person in people[at:]]
    random.Random(seed).shuffle(singles)
    background, heldout = singles[:settings.n_background], singles[settings.n_background:]
    general = general_windows(general_text, tokenizer, settings.n_general, settings.general_window, seed)
    return FinetuneData(groups=groups, background=background, heldout=heldout, general=general, seed=seed,
                        trained=trained)
