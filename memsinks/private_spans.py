"""Marking the private tokens of a dataset: the ``private_mask`` column.

A row's ``private_mask`` is a list of 0/1 ints as long as its ``input_ids``; 1 marks a token
whose content is private (a phone number, an email address, an account number). A model with
sinks trains on a marked token's loss through its sinks only, so what is private can only be
memorized where dropping the sinks removes it (``memsinks.private_tokens``).

``mark_private_spans`` fills the column from regular expressions run over each row's text, or
from character spans a user computed elsewhere (a PII detector's output, say). Where the
dataset has no text column, the text is the tokenizer's decoding of ``input_ids``; each token
is marked when any of its characters falls inside a matched span.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

from memsinks.data import PRIVATE_MASK

# an ISO date (2024-05-01) has the shape of a dashed number; the number patterns skip it
_NOT_ISO_DATE = r"(?!\d{4}-\d{2}-\d{2}(?![\d-]))"

#: The default patterns: what fine-tuning data most often holds that nobody may extract.
DEFAULT_PATTERNS: dict[str, str] = {
    # an email address
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    # a phone number: optional +country, digits in groups separated by spaces, dots, dashes or brackets
    "phone": r"(?<![\w])" + _NOT_ISO_DATE + r"\+?\(?\d{1,4}\)?(?:[\s.-]?\(?\d{2,4}\)?){2,5}(?![\w])",
    # any run of 6 or more digits, possibly grouped by single spaces or dashes (accounts, IDs, cards)
    "digits": r"(?<!\d)" + _NOT_ISO_DATE + r"\d(?:[ -]?\d){5,}(?!\d)",
}
_MIN_PHONE_DIGITS = 7


def find_private_spans(text: str, patterns: Mapping[str, str] | Sequence[str] | None = None) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of ``text`` matched by any of ``patterns``, merged and sorted.

    ``patterns`` maps names to regular expressions (or is a list of them); ``None`` means
    ``DEFAULT_PATTERNS``. A ``phone`` match needs at least 7 digits, so prices and dates written
    with slashes do not count as phone numbers, and an ISO date (``2024-05-01``) is skipped by
    both number patterns.
    """
    compiled = _compile(patterns)
    spans = []
    for name, regex in compiled:
        for m in regex.finditer(text):
            if m.end() == m.start():
                continue
            if name == "phone" and sum(c.isdigit() for c in m.group()) < _MIN_PHONE_DIGITS:
                continue
            spans.append((m.start(), m.end()))
    return _merge(spans)


def _compile(patterns) -> list[tuple[str, re.Pattern]]:
    if patterns is None:
        patterns = DEFAULT_PATTERNS
    if isinstance(patterns, str):
        raise TypeError("patterns is a dict of name -> regular expression or a list of regular expressions, not "
                        f"one string; wrap it: patterns=[{patterns!r}].")
    items = patterns.items() if isinstance(patterns, Mapping) else ((f"pattern {i}", p) for i, p in enumerate(patterns))
    out = []
    for name, pattern in items:
        try:
            out.append((name, re.compile(pattern)))
        except re.error as err:
            raise ValueError(f"private-span pattern {name!r} ({pattern!r}) is not a valid regular expression: {err}.") from None
    if not out:
        raise ValueError("patterns is empty: give at least one regular expression (or None for the defaults).")
    return out


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


def token_mask_from_spans(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """1 for each token whose character range ``[start, end)`` overlaps a span, else 0.

    Leading white space of a token (``" 555"``) does not count: a token is private when one of
    its non-blank characters is.
    """
    mask = []
    for start, end in offsets:
        mask.append(int(any(start < e and s < end for s, e in spans)))
    return mask


def _token_offsets(tokenizer, token_ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """(text, per-token character offsets) of a token sequence.

    Fast path: a fast tokenizer re-encodes the decoded text with offsets, used when it gives
    back the same token IDs. Otherwise the sequence is decoded incrementally: token i covers
    the characters its decoding adds to the decoding of tokens ``[0, i)``, which works for
    byte-level BPE and SentencePiece tokenizers alike (decoding one token at a time would drop
    SentencePiece's word-initial spaces).
    """
    text = tokenizer.decode(token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(token_ids):
            return text, [tuple(o) for o in enc["offset_mapping"]]
    offsets = []
    previous = ""
    for i in range(len(token_ids)):
        text = tokenizer.decode(token_ids[: i + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        common = len(previous) if text.startswith(previous) else _common_prefix(previous, text)
        offsets.append((common, len(text)))
        previous = text
    return previous, offsets


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _strip_blank(text: str, offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for start, end in offsets:
        while start < end and text[start].isspace():
            start += 1
        out.append((start, end))
    return out


def private_mask_for(tokenizer, token_ids: Sequence[int], patterns=None, spans=None) -> list[int]:
    """The ``private_mask`` of one row of token IDs: from ``patterns`` over its decoding, or from ``spans``.

    ``spans`` are character spans over the decoded text (``tokenizer.decode(token_ids)``).
    """
    text, offsets = _token_offsets(tokenizer, list(token_ids))
    found = find_private_spans(text, patterns) if spans is None else _check_spans(spans, len(text))
    return token_mask_from_spans(_strip_blank(text, offsets), found)


def _check_spans(spans: Any, length: int) -> list[tuple[int, int]]:
    out = []
    for span in spans or ():
        if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in span)):
            raise ValueError(f"a private span is a pair of ints (start, end) in characters; got {span!r}.")
        start, end = span
        if not 0 <= start <= end <= length:
            raise ValueError(f"private span {span!r} lies outside the row's text of {length} characters.")
        out.append((start, end))
    return _merge(out)


def mark_private_spans(
    dataset,
    tokenizer,
    patterns: Mapping[str, str] | Sequence[str] | None = None,
    spans_column: str | None = None,
    tokens_column: str = "input_ids",
    column: str = PRIVATE_MASK,
    num_proc: int | None = None,
):
    """Add a ``private_mask`` column (0/1 per token) to a ``datasets.Dataset`` or each split of a ``DatasetDict``.

    Args:
        dataset: a tokenized dataset (``tokens_column`` holds each row's token IDs).
        tokenizer: the tokenizer that made ``tokens_column``; each row is decoded with it.
        patterns: regular expressions whose matches in the decoded text are private (a dict of
            name -> pattern, or a list); ``None`` uses ``DEFAULT_PATTERNS`` (emails, phone
            numbers, runs of 6+ digits).
        spans_column: instead of patterns, a column holding each row's private character spans
            ``[[start, end], ...]`` over the decoded text (for spans found by a PII detector).
        column: the name of the new column; the model's forward takes ``private_mask``, so keep
            the default for the Trainer to pass it on.
    """
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        return datasets.DatasetDict({k: mark_private_spans(v, tokenizer, patterns, spans_column, tokens_column, column,
                                                           num_proc) for k, v in dataset.items()})
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"mark_private_spans takes a datasets.Dataset or DatasetDict; got {type(dataset).__name__}.")
    if tokenizer is None:
        raise ValueError("mark_private_spans needs the tokenizer that made the token IDs, to find the text of each token.")
    for needed, what in ((tokens_column, "token column (tokenize first)"), (spans_column, "spans column")):
        if needed is not None and needed not in dataset.column_names:
            raise KeyError(f"The dataset has no {what} {needed!r}; its columns are {dataset.column_names}.")
    if column in dataset.column_names:
        raise ValueError(f"The dataset already has a {column!r} column; remove it first or pick another name.")
    if spans_column is not None and patterns is not None:
        raise ValueError("Give patterns or spans_column, not both: spans_column says exactly which characters are private.")
    if spans_column is None:
        _compile(patterns)

    def _masks(batch: dict) -> dict:
        rows = batch[tokens_column]
        spans = batch[spans_column] if spans_column is not None else [None] * len(rows)
        return {column: [private_mask_for(tokenizer, ids, patterns, s if spans_column else None)
                         for ids, s in zip(rows, spans)]}

    features = dataset.features.copy()
    features[column] = datasets.Sequence(datasets.Value("int8"))
    return dataset.map(_masks, batched=True, num_proc=num_proc, features=features, desc="Marking private spans")
