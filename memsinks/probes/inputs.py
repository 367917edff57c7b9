"""Probe sets from what users have: strings, token-ID lists, a ``datasets.Dataset`` or a file.

Files hold one sequence per line as plain text, or JSON lines (``.jsonl``) with a ``text``
field (or ``input_ids``, already tokenized) and optionally the sequence's training ID as
``sequence_id`` (an int) or ``doc_id`` (a document key, hashed with ``memsinks.key_id``).
Text is tokenized with ``tokenizer(text)["input_ids"]``; give ``input_ids`` when training
tokenized differently (content IDs hash the exact tokens).

Nothing is cast: a token ID or sequence ID must be an int (a float, a string or a bool is an
error naming the file and line, or the item), since ``3.7`` silently read as ``3`` would probe
or route a different sequence. ``read_records`` is the one reader of such files, for the
probes and the ablation tools alike.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from memsinks._io import read_text
from memsinks.config import validate_sequence_id
from memsinks.data import SEQUENCE_IDS, content_id, key_id


@dataclass
class ProbeSet:
    """Token-ID lists and, when the source named them, their training sequence IDs.

    ``origins`` says where each sequence came from (``"file:line"``), for error messages.
    """

    tokens: list[list[int]]
    ids: list[int] | None = None
    origins: list[str] | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    def ids_or_content(self) -> list[int]:
        """The given IDs, else ``memsinks.content_id`` of each sequence (``assign_sequence_ids``' default)."""
        return list(self.ids) if self.ids is not None else [content_id(t) for t in self.tokens]

    def subset(self, indices: Sequence[int]) -> "ProbeSet":
        indices = list(indices)
        return ProbeSet([self.tokens[i] for i in indices], None if self.ids is None else [self.ids[i] for i in indices],
                        None if self.origins is None else [self.origins[i] for i in indices])

    def where(self, index: int, what: str = "probe set") -> str:
        """Where sequence ``index`` came from: its file and line, else its position in ``what``."""
        return self.origins[index] if self.origins is not None else f"{what}[{index}]"

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
        origins = [f"{what}[{i}]" for i in range(len(items))]
        if all(isinstance(x, str) for x in items):
            return cls(_tokenize(items, tokenizer, what), origins=origins)
        if any(isinstance(x, str) for x in items):
            raise TypeError(f"The {what} mixes strings and token-ID lists; give one kind.")
        return cls([token_list(x, origin) for x, origin in zip(items, origins)], origins=origins)

    @classmethod
    def _from_dataset(cls, ds, tokenizer, what: str) -> "ProbeSet":
        if len(ds) == 0:
            raise ValueError(f"The {what} dataset is empty.")
        if "input_ids" in ds.column_names:
            tokens = [token_list(x, f"{what} row {i}: input_ids") for i, x in enumerate(ds["input_ids"])]
        elif "text" in ds.column_names:
            tokens = _tokenize(list(ds["text"]), tokenizer, what)
        else:
            raise KeyError(f"The {what} dataset needs an 'input_ids' or a 'text' column; it has {ds.column_names}.")
        ids = None
        if SEQUENCE_IDS in ds.column_names:
            raw = list(ds[SEQUENCE_IDS])
            if any(np.ndim(i) for i in raw):
                raise ValueError(f"The {what} has per-token sequence_ids (packed rows); probe whole sequences instead.")
            ids = [sequence_id(i, f"{what} row {n}: sequence_ids") for n, i in enumerate(raw)]
        return cls(tokens, ids, [f"{what} row {i}" for i in range(len(tokens))])

    @classmethod
    def from_file(cls, path: str | os.PathLike, tokenizer=None, what: str = "probe set") -> "ProbeSet":
        """From a text file (one sequence per line; blank lines skipped) or a ``.jsonl`` file."""
        path = os.fspath(path)
        tokens, ids, origins = [], [], []
        for line, record in read_records(path, what):
            where = f"{path}:{line}"
            if "input_ids" in record:
                tokens.append(token_list(record["input_ids"], f"{where}: input_ids"))
            elif "text" in record:
                tokens.append(_tokenize_one(record["text"], tokenizer, where))
            else:
                raise ValueError(f"{where}: each line needs a 'text' (or 'input_ids') field; it has {sorted(record)}.")
            if "sequence_id" in record:
                ids.append(sequence_id(record["sequence_id"], f"{where}: sequence_id"))
            elif "doc_id" in record:
                ids.append(document_id(record["doc_id"], f"{where}: doc_id"))
            else:
                ids.append(None)
            origins.append(where)
        given = [i is not None for i in ids]
        if any(given) and not all(given):
            raise ValueError(f"{path}: some lines have a sequence_id/doc_id and others do not "
                             f"({origins[given.index(False)]} has none); give all or none.")
        return cls(tokens, ids if all(given) else None, origins)


def read_records(path: str | os.PathLike, what: str = "probe set", text_field: str = "text") -> list[tuple[int, dict]]:
    """``(line number, record)`` for every non-blank line of a file.

    A ``.jsonl`` line must be a JSON object; a line of any other file becomes
    ``{text_field: line}``. A missing, empty, binary or non-UTF-8 file is an error naming it.
    """
    path = os.fspath(path)
    text = read_text(path, what)
    records = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        if not path.endswith(".jsonl"):
            records.append((number, {text_field: line}))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err.msg}).") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: each line of a .jsonl file is an object, e.g. {{\"text\": \"...\"}}; "
                             f"got {type(record).__name__}.")
        records.append((number, record))
    if not records:
        raise ValueError(f"The {what} file {path} has no sequences (no non-blank lines).")
    return records


def is_int(value: Any) -> bool:
    """A Python or numpy int, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def token_list(x: Any, where: str) -> list[int]:
    """``x`` (a list, array or tensor of ints) as a list of non-negative ints; anything else is refused, never cast."""
    if hasattr(x, "tolist") and not isinstance(x, list):
        x = x.tolist()
    if not isinstance(x, (list, tuple, range)):
        raise TypeError(f"{where}: a sequence must be a list of token IDs (ints); got {type(x).__name__} "
                        f"{_short(x)}.")
    for i, t in enumerate(x):
        if not is_int(t) or t < 0:
            raise TypeError(f"{where}: token IDs are non-negative ints; item {i} is {t!r} "
                            f"({type(t).__name__}). Nothing is rounded or converted: fix the data.")
    return [int(t) for t in x]


def sequence_id(value: Any, where: str) -> int:
    """A sequence ID as given (an int in [0, 2**63)); a float, string or bool is a ValueError naming ``where``."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 and not isinstance(value, np.integer):
        value = value.item()  # a 0-d tensor or array: its Python scalar, checked below like any other
    try:
        return validate_sequence_id(value, where)
    except TypeError as err:
        raise ValueError(str(err)) from None


def document_id(value: Any, where: str) -> int:
    """``memsinks.key_id`` of a document key (a str or an int); anything else is a ValueError naming ``where``."""
    try:
        return key_id(value)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from None


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _tokenize_one(text: Any, tokenizer, where: str) -> list[int]:
    if not isinstance(text, str):
        raise ValueError(f"{where}: 'text' must be a string; got {type(text).__name__} {_short(text)}.")
    if tokenizer is None:
        raise ValueError(f"{where} is text, but there is no tokenizer to turn it into token IDs. Save the tokenizer "
                         "beside the model, or give token IDs (\"input_ids\") in a .jsonl file.")
    tokens = [int(t) for t in tokenizer(text)["input_ids"]]
    if not tokens:
        raise ValueError(f"{where}: the text tokenizes to no tokens at all ({_short(text)}).")
    return tokens


def _tokenize(texts: list[str], tokenizer, what: str) -> list[list[int]]:
    if tokenizer is None:
        raise ValueError(f"The {what} is text; pass the tokenizer to turn it into token IDs.")
    return [list(map(int, ids)) for ids in tokenizer(texts)["input_ids"]]
