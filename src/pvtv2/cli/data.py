"""``pvtv2 data scenes``: write (or check) the held-out scenes benchmark."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets: generate the scenes benchmark",
                       description="Datasets pvtv2 makes itself.")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATASET", required=True)
    s = data_sub.add_parser(
        "scenes",
        help="Fashion-MNIST items on photographs: detection / instance / semantic segmentation, held-out test split",
        description="Generate the scenes benchmark (or reuse it when DIR already holds the same scenes): COCO "
        "instances (annotations/instances_{train,test}.json with {train,test}/ images), semantic label PNGs "
        "(masks/{train,test}/, 0 = background), class_names.txt and manifest.json with every file's SHA-256. "
        "Train scenes use Fashion-MNIST's training images and one set of scikit-image photographs, test scenes its "
        "test images and other photographs. The same settings and seed give the same bytes.",
    )
    s.add_argument("--out", metavar="DIR", help="where to write it (default: the cache, $PVTV2_CACHE or "
                   "$XDG_CACHE_HOME/pvtv2 or ~/.cache/pvtv2, under scenes/)")
    s.add_argument("--train", type=int, default=4000, metavar="N", help="train scenes (default 4000)")
    s.add_argument("--test", type=int, default=500, metavar="M", help="test scenes (default 500)")
    s.add_argument("--size", type=int, default=256, metavar="S", help="canvas side in pixels (default 256)")
    s.add_argument("--seed", type=int, default=0, metavar="K", help="random seed (default 0)")
    s.add_argument("--max-objects", type=int, default=8, metavar="N", help="items pasted per scene, at most "
                   "(default 8; at least 1)")
    s.add_argument("--workers", type=int, default=2, metavar="N", help="generating processes (default 2)")
    s.add_argument("--data-dir", metavar="DIR", help="Fashion-MNIST in torchvision's layout (default: the Debian "
                   "package dataset-fashion-mnist)")
    s.add_argument("--check", metavar="DIR", help="only check an existing scenes folder against its manifest "
                   "(every file's SHA-256) and print its summary")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=run_scenes)


def run_scenes(args: argparse.Namespace) -> int:
    from ..data.scenes import check, read_manifest, scenes
    from ..errors import DataError

    if args.check:
        reason = check(args.check)
        if reason is not None:
            raise DataError(f"{args.check} is not a complete scenes set: {reason}")
        root = args.check
    else:
        root = scenes(args.out, train=args.train, test=args.test, size=args.size, seed=args.seed,
                      max_objects=args.max_objects, workers=args.workers, data_dir=args.data_dir,
                      progress=not args.no_progress)
    manifest = read_manifest(root) or {}
    print(root)
    for split, info in manifest.get("splits", {}).items():
        sizes = ", ".join(f"{k} {v}" for k, v in info["object_sizes"].items())
        print(f"  {split}: {info['images']} scenes, {info['objects']} objects ({sizes}), "
              f"{info['bytes'] / 1e6:.0f} MB, photos {json.dumps(sorted(info['photos']))}")
    return 0
