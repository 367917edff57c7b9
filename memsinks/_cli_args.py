"""Argument types shared by the ``memsinks`` subcommands: a bad value is refused by the parser, naming it.

argparse turns an ``ArgumentTypeError`` into ``memsinks CMD: error: argument --opt: <message>``
and exit status 2, before any model is loaded.
"""

from __future__ import annotations

import argparse
import os

# Extensions that mark a data source as a local file rather than a datasets name.
_LOCAL_SUFFIXES = (".txt", ".text", ".md", ".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow")


def path_arg(value: str) -> str:
    """A file or folder name; an empty one is an error (it would otherwise switch the option off silently)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("got an empty path; give a file name or leave the option out")
    return value


def _int_at_least(value: str, low: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}; got {number}")
    return number


def positive_int(value: str) -> int:
    """An int >= 1."""
    return _int_at_least(value, 1)


def nonnegative_int(value: str) -> int:
    """An int >= 0."""
    return _int_at_least(value, 0)


def data_source(value: str) -> str:
    """A local text file or saved dataset folder, or a ``datasets`` name.

    A value that looks like a local path (a file extension, or starting with ``/``, ``.`` or
    ``~``, or more than one ``/``) must exist: otherwise the name would be looked up on the Hub
    and fail there with a connection error instead of saying that the file is missing.
    """
    value = path_arg(value)
    if os.path.exists(value):
        return value
    looks_local = (value.lower().endswith(_LOCAL_SUFFIXES) or value.startswith(("/", ".", "~"))
                   or value.count("/") > 1 or os.sep != "/" and os.sep in value)
    if looks_local:
        raise argparse.ArgumentTypeError(
            f"{value} does not exist. Give an existing .txt/.jsonl file or a folder saved by datasets, or the name "
            "of a datasets dataset (such as 'roneneldan/TinyStories')")
    return value
