"""Measured differences between pvtv2 and timm's independent PVT v2 with the same weights, per variant.

The test suite asserts the 1e-4 bound (tests/test_parity.py); this prints the figures themselves:

    python scripts/parity_report.py
"""

from __future__ import annotations

import timm
import torch

from pvtv2 import create_model, list_models, load_weights

SIZES = ((224, 224), (200, 328))  # square, and non-square not a multiple of 32


def main() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    images = {s: torch.randn(1, 3, *s, generator=g) for s in SIZES}
    print(f"{'model':14s} " + " | ".join(f"{h}x{w}: logits / stage features" for h, w in SIZES))
    for name in list_models("pvt_v2_*"):
        ref = timm.create_model(name).eval()  # timm's random init, copied into ours through the timm converter
        ours = create_model(name).eval()
        load_weights(ours, ref.state_dict())
        cells = []
        with torch.inference_mode():
            for x in images.values():
                logits = (ours(x) - ref(x)).abs().max().item()
                theirs = ref.forward_intermediates(x, intermediates_only=True)
                feats = max((a - b).abs().max().item() for a, b in zip(ours.forward_features(x), theirs))
                cells.append(f"{logits:.1e} / {feats:.1e}")
        print(f"{name:14s} " + " | ".join(f"{c:>30s}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
