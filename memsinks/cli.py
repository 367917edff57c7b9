"""The ``memsinks`` command: ``memsinks --version``, ``memsinks demo`` and the tools' subcommands.

Each subcommand lives beside the code it runs and registers itself through an
``add_parser(subparsers)`` function that sets ``func`` on its parser.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys

from memsinks._version import __version__

# Modules whose ``add_parser(subparsers)`` registers a subcommand.
SUBCOMMAND_MODULES = [
    "memsinks.demo",
    "memsinks.probes.cli",
    "memsinks.ablation.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memsinks",
        description="Memorization-aware training of Hugging Face causal LMs: sinks, DP-SGD, probes, ablation.",
    )
    parser.add_argument("--version", action="version", version=f"memsinks {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


@contextlib.contextmanager
def _transformers_bars(enabled: bool):
    """Hide transformers' own progress bars (loading and writing weights) unless ``enabled``; restored after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not enabled and was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not hf_logging.is_progress_bar_enabled():
            hf_logging.enable_progress_bar()


def _describe(err: Exception) -> str:
    """One line for an error: the message, and for an OSError from the system also the file it concerns."""
    if isinstance(err, OSError) and err.strerror and (len(err.args) > 1):
        where = f": {err.filename}" if err.filename and str(err.filename) not in err.strerror else ""
        return f"{err.strerror}{where}"
    return str(err)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    quiet = bool(getattr(args, "quiet", False) or getattr(args, "no_progress", False))
    try:
        with _transformers_bars(enabled=not quiet):
            return int(args.func(args) or 0)
    except (ValueError, OSError) as err:  # bad input, or a file that cannot be read or written (a full disk)
        print(f"memsinks {args.command}: error: {_describe(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
