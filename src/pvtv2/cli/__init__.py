"""The ``pvtv2`` command line: parses arguments and calls the library; nothing imports it.

Each sub-command lives in a module of this package that defines ``register(subparsers)``; heavy imports happen
inside the command functions so that ``pvtv2 --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence

from ..errors import PVTError

# Sub-command modules, in the order ``pvtv2 --help`` lists them.
_MODULES = ("train", "models", "weights", "flops", "export", "bench", "det", "seg", "data", "attention", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pvtv2",
        description="PVT v2: train, evaluate, convert, export and analyse Pyramid Vision Transformers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _MODULES:
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:
            importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        if getattr(args, "no_progress", False):  # weights load deep inside model builders: their bars too
            from ..weights.download import progress_bars

            with progress_bars(False):
                return int(args.func(args) or 0)
        return int(args.func(args) or 0)
    except PVTError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
