#!/usr/bin/env python
"""Run the ``pvtv2 bench`` benchmark without the installed CLI: ``python scripts/benchmark.py [--smoke] [...]``.

Same flags as ``pvtv2 bench`` (see ``--help``); needs ``src/`` importable (``pip install -e .`` or PYTHONPATH=src).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pvtv2.cli.bench import add_arguments, run_bench  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(run_bench(parser.parse_args()))
