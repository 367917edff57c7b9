"""One seed's fine-tuning data: record groups repeated 1, 4, 16 times, background records, held-out records,
and windows of general text the base model should keep knowing."""

from __future__ import annotations

import random
from dataclasses import dataclass

from memsinks.data import key_id

from .records import EncodedRecord, encode, make_records


@dataclass
class FinetuneData:
    """``groups``: repeat count -> records trained on that many times; ``background`` once;
    ``heldout`` never. ``general``: token windows of general text (not trained on)."""

    groups: dict[int, list[EncodedRecord]]
    background: list[EncodedRecord]
    heldout: list[EncodedRecord]
    general: list[list[int]]
    seed: int

    def record_id(self, record: EncodedRecord) -> int:
        """The record's sequence ID: one per record, so every copy of it shares its sinks."""
        return key_id(record.record.text)

    def training_rows(self) -> list[EncodedRecord]:
        """Every training row (repeated records once per repetition), shuffled with the seed."""
        rows = list(self.background)
        for repeats, records in self.groups.items():
            rows += records * repeats
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
