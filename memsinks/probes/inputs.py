"""Probe sets from what users have: strings, token-ID lists, a ``datasets.Dataset`` or a file.

Files hold one sequence per line as plain text, or JSON lines (``.jsonl``) with a ``text``
field (or ``input_ids``, already tokenized) and optionally the sequence's training ID as
``sequence_id`` (an int) or ``doc_id`` (a document key, hashed with ``memsinks.key_id``).
Text is tokenized with ``tokenizer(text)["input_ids"]``; give ``input_ids`` when training
tokenized differently (content IDs hash the exact tokens).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from memsinks.data import SEQUENCE_IDS, content_id, key_id


@dataclass
class ProbeSet:
    """Token-ID lists and, when the source named them, their training sequence IDs."""

    tokens: list[list[int]]
    ids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    def ids_or_content(self) -> list[int]:
        """The given IDs, else ``memsinks.content_id`` of each sequence (``assign_sequence_ids``' default)."""
        return list(self.ids) if self.ids is not None else [content_id(t) for t in self.tokens]

    def subset(self, indices: Sequence[int]) -> "ProbeSet":
        return ProbeSet([self.tokens[i] for i in indices], None if self.ids is None else [self.ids[i] for i in indices])

    @classmethod
    def from_data(cls, data: Any, tokenizer=None, what: str = "probe set") -> "ProbeSet":
        """From a list of strings or token-ID lists, or a ``datasets.Dataset`` (``input_ids`` or ``text``
        column; a ``sequence_ids`` column supplies the IDs)."""
        if isinstance(data, ProbeSet):
            return data
        if data is None:
            raise ValueError(f"The {what} is missing; give a list of strings, token-ID lists or a datasets.Dataset.")
        try:
            import datasets

            is_dataset = isinstance(data, datasets.Dataset)
        except ImportError:  # pragma: no cover - datasets is a dependency
            is_dataset = False
        if is_dataset:
            return cls._from_dataset(data, tokenizer, what)
        if isinstance(data, (str, bytes)) or not hasattr(data, "__len__"):
            raise TypeError(f"The {what} must be a list of strings or token-ID lists, or a datasets.Dataset; "
                            f"got {type(data).__name__}.")
        items = list(data)
        if not items:
            raise ValueError(f"The {what} is empty; give at least one sequence.")
        if all(isinstance(x, str) for x in items):
            return cls(_tokenize(items, tokenizer, what))
        if any(isinstance(x, str) for x in items):
            raise TypeError(f"The {what} mixes strings and token-ID lists; give one kind.")
        return cls([_as_ints(x, what) for x in items])

    @classmethod
    def _from_dataset(cls, ds, tokenizer, what: str) -> "ProbeSet":
        if len(ds) == 0:
            raise ValueError(f"The {what} dataset is empty.")
        if "input_ids" in ds.column_names:
            tokens = [_as_ints(x, what) for x in ds["input_ids"]]
        elif "text" in ds.column_names:
            tokens = _tokenize(list(ds["text"]), tokenizer, what)
        else:
            raise KeyError(f"The {what} dataset needs an 'input_ids' or a 'text' column; it has {ds.column_names}.")
        ids = None
        if SEQUENCE_IDS in ds.column_names:
            ids = [int(i) for i in ds[SEQUENCE_IDS]]
            if any(np.ndim(i) for i in ids):
                raise ValueError(f"The {what} has per-token sequence_ids (packed rows); probe whole sequences instead.")
        return cls(tokens, ids)

    @classmethod
    def from_file(cls, path: str | os.PathLike, tokenizer=None, what: str = "probe set") -> "ProbeSet":
        """From a text file (one sequence per line; blank lines skipped) or a ``.jsonl`` file."""
        records = read_records(path, what)
        tokens = [_as_ints(r["input_ids"], what) if "input_ids" in r else _tokenize([r["text"]], tokenizer, what)[0]
                  for r in records]
        has_id = ["sequence_id" in r or "doc_id" in r for r in records]
        ids = None
        if any(has_id):
            if not all(has_id):
                raise ValueError(f"{path}: some lines have a sequence_id/doc_id and others do not; give all or none.")
            ids = [int(r["sequence_id"]) if "sequence_id" in r else key_id(r["doc_id"]) for r in records]
        return cls(tokens, ids)


def read_records(path: str | os.PathLike, what: str = "probe set") -> list[dict]:
    """The sequences of a file as dicts: ``{"text": line}`` per non-blank line of a text file, or each
    ``.jsonl`` record (which must have ``text`` or ``input_ids``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The {what} file {path} does not exist.")
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not path.endswith(".jsonl"):
            records.append({"text": line})
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg}).") from None
        if not isinstance(record, dict) or not ("text" in record or "input_ids" in record):
            raise ValueError(f"{path}:{number}: each line needs a 'text' (or 'input_ids') field.")
        records.append(record)
    if not records:
        raise ValueError(f"The {what} file {path} has no sequences (no non-blank lines).")
    return records


def _tokenize(texts: list[str], tokenizer, what: str) -> list[list[int]]:
    if tokenizer is None:
        raise ValueError(f"The {what} is text; pass the tokenizer to turn it into token IDs.")
    return [list(map(int, ids)) for ids in tokenizer(texts)["input_ids"]]


def _as_ints(x: Any, what: str) -> list[int]:
    if hasattr(x, "tolist"):
        x = x.tolist()
    try:
        return [int(t) for t in x]
    except (TypeError, ValueError):
        raise TypeError(f"The {what} must hold strings or lists of token IDs; got an item of "
                        f"{type(x).__name__}.") from None
