"""``pvtv2 weights``: every published weight source, what is known about each file, and what is already cached."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="list the released and Hugging Face Hub weights, their sizes, hashes and "
                                       "whether they are in the local cache")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter on model or source names")
    p.add_argument("--verify", action="store_true", help="hash the cached files and compare with the recorded SHA-256")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=run_weights)


def weight_rows(pattern: str = "*", *, verify: bool = False) -> list[dict[str, object]]:
    """One dict per known source: what ``pvtv2 weights`` prints."""
    from ..weights.download import cache_dir, sha256_file
    from ..weights.release import HUB_FILES, RELEASES

    rows: list[dict[str, object]] = []
    for rel in RELEASES.values():
        cached = cache_dir() / rel.file
        rows.append({"source": "official", "model": rel.name, "where": rel.url, "layout": "official",
                     "approx_mb": rel.approx_mb, "sha256": rel.sha256, "top1": rel.top1,
                     "cached": str(cached) if cached.is_file() else None})
    hub_cache = _hub_cache_lookup()
    for hub in HUB_FILES.values():
        hit = hub_cache(hub.repo, hub.filename)
        rows.append({"source": f"hf-hub:{hub.repo}", "model": hub.name, "where": f"{hub.repo}/{hub.filename}",
                     "layout": hub.layout, "approx_mb": hub.approx_mb, "sha256": hub.sha256, "top1": None,
                     "cached": hit})
    rows = [r for r in rows if fnmatch(str(r["model"]), pattern) or fnmatch(str(r["source"]), pattern)]
    for r in rows:
        if verify and r["cached"]:
            got = sha256_file(str(r["cached"]))
            r["check"] = "unrecorded" if not r["sha256"] else "ok" if got == r["sha256"] else f"MISMATCH ({got})"
    return rows


def _hub_cache_lookup() -> Callable[[str, str], str | None]:
    """``(repo, filename) -> cached path or None``; always ``None`` without huggingface_hub."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return lambda repo, filename: None

    def lookup(repo: str, filename: str) -> str | None:
        hit = try_to_load_from_cache(repo, filename)
        return hit if isinstance(hit, str) else None

    return lookup


def run_weights(args: argparse.Namespace) -> int:
    from ..errors import UnknownModelError
    from ..weights.download import cache_dir

    rows = weight_rows(args.pattern, verify=args.verify)
    if not rows:
        raise UnknownModelError(f"no weight source matches {args.pattern!r}; try 'pvtv2 weights' for the list")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"released files: weights='official' (cache: {cache_dir()}); Hub files: weights='hf-hub:REPO' "
          "(cache: huggingface_hub's)")
    check = args.verify
    header = f"{'source':<34} {'model':<14} {'layout':<8} {'MB':>6}  {'sha256':<16}  cached"
    print(header + ("  check" if check else ""))
    for r in rows:
        source = Path(str(r["where"])).name if r["source"] == "official" else r["source"]
        mb = f"{r['approx_mb']:g}" if r["approx_mb"] is not None else "-"
        sha = str(r["sha256"])[:16] if r["sha256"] else "unrecorded"
        cached = "yes" if r["cached"] else "no"
        tail = f"  {r.get('check', '-')}" if check else ""
        print(f"{source:<34} {r['model']:<14} {r['layout']:<8} {mb:>6}  {sha:<16}  {cached}{tail}")
    print("MB: as the authors' README / the Hub label the file (rounded); sha256: first 16 hex digits (--json for all)")
    return 0
