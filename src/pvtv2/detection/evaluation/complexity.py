"""Params and GFLOPs of the detectors at 1280x800, beside the paper's Tables 3 and 6.

What is counted is the dense forward pass the released numbers come from (mmdet's ``get_flops.py`` calls
``forward_dummy``): backbone + FPN + heads on one 800x1280 image, without anchors, box decoding or NMS.
RetinaNet: classification and box subnets on P3-P7. Mask R-CNN: RPN head on P2-P6, then the box head on 1000
RoIs and the mask head on 100 RoIs, as ``forward_dummy`` does (RoIAlign itself is not counted, as in mmcv).
COCO's 80 classes (the R-CNN predictors add a background class, as mmdet's do).
GFLOPs are MACs in mmcv's convention plus the attention products (:mod:`pvtv2.analysis`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...models import list_models
from ..registry import DetectorSpec, get_detector

INPUT_SIZE = (800, 1280)  # (H, W): the paper's "1280x800"
TABLE6_MODELS = ("pvt_v1_small", "pvt_v1_small_ope", "pvt_v1_small_ope_cffn", "pvt_v1_small_ope_cffn_lsra")

# The paper's Table 3 (#P in M; it gives no GFLOPs there) and Table 6 (RetinaNet #P / GFLOPs at 1280x800).
PAPER: dict[tuple[str, str], tuple[float | None, float | None]] = {
    ("pvt_v2_b0", "retinanet"): (13.0, None),
    ("pvt_v2_b1", "retinanet"): (23.8, None),
    ("pvt_v2_b0", "mask_rcnn"): (23.5, None),
    ("pvt_v2_b1", "mask_rcnn"): (33.7, None),
    ("pvt_v1_small", "retinanet"): (34.2, 285.8),
    ("pvt_v1_small_ope", "retinanet"): (34.9, 288.6),
    ("pvt_v1_small_ope_cffn", "retinanet"): (35.1, 290.7),
    ("pvt_v1_small_ope_cffn_lsra", "retinanet"): (32.3, 227.4),
    ("pvt_v2_b2", "retinanet"): (35.1, 290.7),  # = Table 6's ++CFFN row
    ("pvt_v2_b2_li", "retinanet"): (32.3, 227.4),  # = Table 6's +++LSRA row
}

NOTES = {
    "retinanet": "torchvision's head = mmdet's RetinaHead (4 convs, 9 anchors, 80 classes)",
    "mask_rcnn": "torchvision predictor: 81x4 box deltas, 81 mask logits (mmdet 80x4, 80): +0.004 M, +0.02 GFLOPs",
}


class CostForward(nn.Module):
    """A detector's forward pass as the paper's GFLOPs count it (its registry record's ``cost_forward``).

    Args:
        detector: a detector built by :mod:`pvtv2.detection` (its weights are used, not copied).
        spec: its registry record.
    """

    def __init__(self, detector: nn.Module, spec: DetectorSpec) -> None:
        super().__init__()
        self.detector = detector
        self.spec = spec

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``(1, 3, H, W)`` normalised image -> the raw outputs."""
        return list(self.spec.cost_forward(self.detector, images).values())


def detector_complexity(arch: str, backbone: str, input_size: Sequence[int] = INPUT_SIZE, **build: Any) -> Any:
    """:func:`pvtv2.analysis.complexity` of ``arch`` on ``backbone`` (built on the meta device: no memory).

    Args:
        arch, backbone: registered names.
        input_size: ``(H, W)`` of the image.
        **build: builder arguments (default: COCO's 80 classes).
    """
    from ...analysis import complexity

    spec = get_detector(arch)
    with torch.device("meta"):
        det = spec.build(backbone=backbone, **{"num_classes": 80, **build})
    return complexity(CostForward(det, spec), tuple(input_size))


def complexity_rows(models: list[str] | None = None) -> list[dict[str, Any]]:
    """Params (M) and GFLOPs at 1280x800 of RetinaNet and Mask R-CNN on each backbone, with the paper's figures.

    Args:
        models: backbone names (default: every PVT v2 and the Table 6 rows). Mask R-CNN rows are given for the
            PVT v2 models (Table 3), RetinaNet rows for all.

    Returns:
        dicts with ``model``, ``head``, ``params_m``, ``gflops``, ``paper_params_m``, ``paper_gflops``,
        ``input_size`` and ``note``.
    """
    names = models or [*list_models("pvt_v2_*"), *TABLE6_MODELS]
    rows = []
    for name in names:
        for head in ("retinanet", "mask_rcnn"):
            if head == "mask_rcnn" and models is None and not name.startswith("pvt_v2_"):
                continue
            c = detector_complexity(head, name)
            paper_params, paper_gflops = PAPER.get((name, head), (None, None))
            rows.append({
                "model": name,
                "head": head,
                "params_m": round(c.params_m, 2),
                "gflops": round(c.gflops, 1),
                "paper_params_m": paper_params,
                "paper_gflops": paper_gflops,
                "input_size": f"{INPUT_SIZE[1]}x{INPUT_SIZE[0]}",
                "note": NOTES[head],
            })
    return rows
