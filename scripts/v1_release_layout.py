#!/usr/bin/env python
"""Check that PVT v1 checkpoints in the authors' layout load into pvtv2 and run the same (not part of the suite).

The authors' model file (whai362/PVT, branch v2, ``classification/pvt.py``; it needs timm) builds ``pvt_tiny`` ...
``pvt_large`` with their module names, i.e. exactly the keys and shapes of the released ``pvt_tiny.pth`` ...
``pvt_large.pth``. This script fills each with seeded random values, loads its state dict into the matching
``pvt_v1_*`` model with :func:`pvtv2.load_weights` (strict), checks that converting back gives the same key set,
and prints the largest logit difference on random inputs at 224x224 and at a non-square size.

    python scripts/v1_release_layout.py path/to/whai362-PVT/classification/pvt.py
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("authors_pvt", help="the authors' classification/pvt.py")
    p.add_argument("--models", nargs="+", default=["tiny", "small"], choices=["tiny", "small", "medium", "large"])
    p.add_argument("--tol", type=float, default=1e-4, help="largest logit difference accepted")
    args = p.parse_args(argv)

    from pvtv2 import convert, create_model, load_weights

    warnings.filterwarnings("ignore")  # timm's deprecation notices for the authors' imports
    spec = importlib.util.spec_from_file_location("authors_pvt", args.authors_pvt)
    authors = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["authors_pvt"] = authors  # timm's @register_model looks its module up there
    spec.loader.exec_module(authors)  # type: ignore[union-attr]
    torch.set_num_threads(1)
    worst = 0.0
    for size in args.models:
        torch.manual_seed(0)
        ref = getattr(authors, f"pvt_{size}")().eval()
        sd = ref.state_dict()
        ours = create_model(f"pvt_v1_{size}").eval()
        report = load_weights(ours, sd)  # strict: raises on any missing, unexpected or mis-shaped key
        if convert(ours.state_dict(), "pvtv2", "official").keys() != sd.keys():
            print(f"pvt_{size}: converting back does not give the released key set")
            return 1
        for hw in [(224, 224), (160, 288)]:
            x = torch.randn(2, 3, *hw)
            with torch.no_grad():
                diff = (ref(x) - ours(x)).abs().max().item()
            worst = max(worst, diff)
            print(f"pvt_{size}: {report.loaded} tensors ({report.format} layout, pos_embed4 "
                  f"{tuple(sd['pos_embed4'].shape)}), {hw[0]}x{hw[1]}: max |logit difference| {diff:.2e}")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
