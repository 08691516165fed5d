"""The published figures, as data: the released code's GFLOPs at 224x224, the paper's Tables 2 and 6, PVT v1's top-1.

"GFLOPs" everywhere here are GMACs in mmcv's convention plus the attention products (see :mod:`.counting`).
"""

from __future__ import annotations

from dataclasses import dataclass

# What the authors' released code (mmcv + hand-added attention products) prints at 224x224, 2 decimals.
RELEASED_GFLOPS: dict[str, float] = {
    "pvt_v2_b0": 0.57,
    "pvt_v2_b1": 2.12,
    "pvt_v2_b2_li": 3.92,
    "pvt_v2_b2": 4.04,
    "pvt_v2_b3": 6.92,
    "pvt_v2_b4": 10.14,
    "pvt_v2_b5": 11.75,
}
# The same without the attention products (mmcv's raw count).
RELEASED_GFLOPS_NO_MATMUL: dict[str, float] = {
    "pvt_v2_b0": 0.53,
    "pvt_v2_b1": 2.04,
    "pvt_v2_b2_li": 3.78,
    "pvt_v2_b2": 3.90,
    "pvt_v2_b3": 6.71,
    "pvt_v2_b4": 9.83,
    "pvt_v2_b5": 11.38,
}


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper table: ImageNet top-1 at 224, and the table's own params (M) / GFLOPs."""

    top1: float
    params_m: float | None = None
    gflops: float | None = None
    note: str = ""


# Table 2: ImageNet-1K classification at 224x224.
TABLE2: dict[str, PaperRow] = {
    "pvt_v2_b0": PaperRow(70.5, 3.4, 0.6, "paper 3.4 M = without the head; released 3.67 M with it (authors: 3.7 M)"),
    "pvt_v2_b1": PaperRow(78.7, 13.1, 2.1, "paper 13.1 M; released 14.01 M with head, 13.50 M without (unexplained)"),
    "pvt_v2_b2_li": PaperRow(82.1, 22.6, 3.9),
    "pvt_v2_b2": PaperRow(82.0, 25.4, 4.0),
    "pvt_v2_b3": PaperRow(83.2, 45.2, 6.9, "released README: 83.1 top-1"),
    "pvt_v2_b4": PaperRow(83.6, 62.6, 10.1),
    "pvt_v2_b5": PaperRow(83.8, 82.0, 11.8),
}

# PVT v1 (Wang et al., 2021, Table 2 of that paper): ImageNet-1K top-1 at 224.
PVT_V1_TOP1: dict[str, float] = {"pvt_v1_tiny": 75.1, "pvt_v1_small": 79.8, "pvt_v1_medium": 81.2,
                                 "pvt_v1_large": 81.7}

# Table 6: the ablation path. Top-1 is ImageNet at 224; params / GFLOPs are the paper's RetinaNet 1x at 1280x800.
TABLE6: dict[str, PaperRow] = {
    "pvt_v1_small": PaperRow(79.8, 34.2, 285.8, "PVT v1-Small"),
    "pvt_v1_small_ope": PaperRow(81.1, 34.9, 288.6, "+ overlapping patch embedding"),
    "pvt_v1_small_ope_cffn": PaperRow(82.0, 35.1, 290.7, "++ convolutional FFN (= PVT v2-B2)"),
    "pvt_v1_small_ope_cffn_lsra": PaperRow(82.1, 32.3, 227.4, "+++ linear SRA (= PVT v2-B2-Li)"),
}
TABLE6_DETECTION_SIZE = (800, 1280)  # (H, W) of the paper's detection GFLOPs

# Figure 4: the paper's stated order of GFLOPs growth with input scale, fastest first.
FIGURE4_ORDER: tuple[str, ...] = ("vit_small_16", "vit_small_32", "pvt_v1_small", "resnet50", "pvt_v2_b2_li")


def published_top1(name: str) -> float | None:
    """The ImageNet-1K top-1 the papers give for ``name`` (Table 2, Table 6, or PVT v1's), or ``None``."""
    row = TABLE2.get(name) or TABLE6.get(name)
    return row.top1 if row is not None else PVT_V1_TOP1.get(name)
