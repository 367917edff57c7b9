"""The ``memsinks`` command: ``memsinks --version``, ``memsinks demo`` and the tools' subcommands.

Each subcommand lives beside the code it runs and registers itself through an
``add_parser(subparsers)`` function that sets ``func`` on its parser.
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"memsinks {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
