"""The paper's Table 4: four detectors on ResNet-50, Swin-T, PVT v2-B2-Li and PVT v2-B2, our #P and GFLOPs beside it.

Table 4 (COCO val2017, 3x schedule with multi-scale training) gives box AP, #P (M) and GFLOPs at 1280x800 for
Cascade Mask R-CNN, ATSS, GFL and Sparse R-CNN. Our counts are those of :mod:`.complexity`: the registered
detector's cost forward (mmdet's ``forward_dummy``) on one 800x1280 image with COCO's 80 classes, MACs in mmcv's
convention plus the attention products (the paper adds them for PVT; Swin-T's figures include them too: without
them its ATSS row would be 211.6, 1.6 % under the paper's 215).
"""

from __future__ import annotations

from typing import Any

from ..registry import DETECTORS
from .complexity import INPUT_SIZE, detector_complexity

BACKBONES = ("resnet50", "swin_t", "pvt_v2_b2_li", "pvt_v2_b2")
DETECTORS_T4 = ("cascade_mask_rcnn", "atss", "gfl", "sparse_rcnn")

# (detector, backbone) -> (box AP, #P in M, GFLOPs), the paper's Table 4.
PAPER: dict[tuple[str, str], tuple[float, float, float]] = {
    ("cascade_mask_rcnn", "resnet50"): (46.3, 82, 739),
    ("cascade_mask_rcnn", "swin_t"): (50.5, 86, 745),
    ("cascade_mask_rcnn", "pvt_v2_b2_li"): (50.9, 80, 725),
    ("cascade_mask_rcnn", "pvt_v2_b2"): (51.1, 83, 788),
    ("atss", "resnet50"): (43.5, 32, 205),
    ("atss", "swin_t"): (47.2, 36, 215),
    ("atss", "pvt_v2_b2_li"): (48.9, 30, 194),
    ("atss", "pvt_v2_b2"): (49.9, 33, 258),
    ("gfl", "resnet50"): (44.5, 32, 208),
    ("gfl", "swin_t"): (47.6, 36, 215),
    ("gfl", "pvt_v2_b2_li"): (49.2, 30, 197),
    ("gfl", "pvt_v2_b2"): (50.2, 33, 261),
    ("sparse_rcnn", "resnet50"): (44.5, 106, 166),
    ("sparse_rcnn", "swin_t"): (47.9, 110, 172),
    ("sparse_rcnn", "pvt_v2_b2_li"): (48.9, 104, 151),
    ("sparse_rcnn", "pvt_v2_b2"): (50.1, 107, 215),
}

# Cells whose difference from the paper has a known cause.
NOTES: dict[tuple[str, str], str] = {
    ("gfl", "swin_t"): "paper repeats its ATSS figure (215); GFL's head costs 3.1 G more on every backbone",
}


def table4_rows() -> list[dict[str, Any]]:
    """The 16 cells of Table 4 (detector-major, backbones in the paper's column order) with our #P and GFLOPs;
    detectors not registered yet get the paper's figures and a note."""
    rows = []
    for arch in DETECTORS_T4:
        for backbone in BACKBONES:
            ap, paper_params, paper_gflops = PAPER[(arch, backbone)]
            row: dict[str, Any] = {"detector": arch, "backbone": backbone, "paper_ap": ap,
                                   "params_m": None, "paper_params_m": paper_params, "gflops": None,
                                   "paper_gflops": paper_gflops, "gflops_diff_pct": None,
                                   "input_size": f"{INPUT_SIZE[1]}x{INPUT_SIZE[0]}",
                                   "note": NOTES.get((arch, backbone))}
            if arch in DETECTORS:
                c = detector_complexity(arch, backbone)
                row.update(params_m=round(c.params_m, 3), gflops=round(c.gflops, 2),
                           gflops_diff_pct=round(100 * (c.gflops / paper_gflops - 1), 2))
            else:
                row["note"] = f"{arch} is not built yet"
            rows.append(row)
    return rows
