"""The lowest versions pyproject.toml declares for some requirements, and a check that they are the ones installed.

    python scripts/lowest_requirements.py torch torchvision           # -> torch==2.4 torchvision==0.19
    python scripts/lowest_requirements.py --check torch torchvision   # exit 1 unless exactly those are installed

Used by ``make test-min``: the lower bounds are read from the one place they are declared, so the environment that
proves them cannot drift from the metadata users install from.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def lowest(names: list[str]) -> dict[str, str]:
    """``{name: lowest version}`` from the ``>=`` bound of each requirement in ``[project].dependencies``."""
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    found: dict[str, str] = {}
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)\s*(,.*)?", dep)
        if m and m.group(1).lower() in names:
            found[m.group(1).lower()] = m.group(2)
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"pyproject.toml declares no '>=' lower bound for {', '.join(missing)}")
    return found


def _release(version: str) -> tuple[int, ...]:
    """(2, 4, 0) from '2.4.0+cu121' or '2.4'."""
    nums = [int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3]]
    return tuple(nums + [0] * (3 - len(nums)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+")
    ap.add_argument("--check", action="store_true", help="verify the installed versions instead of printing pins")
    args = ap.parse_args()
    bounds = lowest([n.lower() for n in args.names])
    if not args.check:
        print(" ".join(f"{n}=={v}" for n, v in bounds.items()))
        return 0
    bad = []
    for n, v in bounds.items():
        try:
            have = metadata.version(n)
        except metadata.PackageNotFoundError:
            bad.append(f"{n} is not installed")
            continue
        if _release(have) != _release(v):
            bad.append(f"{n} {have} installed, {v} expected")
    if bad:
        print("lowest-requirements check failed: " + "; ".join(bad), file=sys.stderr)
        return 1
    import pvtv2

    if "site-packages" not in Path(pvtv2.__file__).parts:
        bad.append(f"pvtv2 imported from {pvtv2.__file__}, not from an installed copy")
    if bad:
        print("lowest-requirements check failed: " + "; ".join(bad), file=sys.stderr)
        return 1
    print("lowest requirements installed: " + ", ".join(f"{n} {metadata.version(n)}" for n in bounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
