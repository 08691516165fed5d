"""Paper Table 5 beside ours: Semantic FPN parameters and GFLOPs at 512x512 for every PVT v2 backbone.

Counted with :func:`pvtv2.analysis.complexity` (shapes only, on the meta device) in the paper's convention:
mmcv's multiply-accumulates plus the attention products. The bilinear upsamplings of the decoder and the final
resize to the input are not counted (mmcv does not count mmseg's ``Upsample``/``F.interpolate``), nor is the
FPN's nearest top-down interpolation. With that convention every row matches the paper to its rounding.
"""

from __future__ import annotations

from typing import Any

# Table 5 (ADE20K, Semantic FPN): params (M), GFLOPs at 512x512, mIoU (%).
PAPER_TABLE5: dict[str, tuple[float, float, float]] = {
    "pvt_v2_b0": (7.6, 25.0, 37.2),
    "pvt_v2_b1": (17.8, 34.2, 42.5),
    "pvt_v2_b2_li": (26.3, 41.0, 45.1),
    "pvt_v2_b2": (29.1, 45.8, 45.2),
    "pvt_v2_b3": (49.0, 62.4, 47.3),
    "pvt_v2_b4": (66.3, 81.3, 47.9),
    "pvt_v2_b5": (85.7, 91.1, 48.7),
}

INPUT_SIZE = (512, 512)


def complexity_rows(models: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per backbone: ours next to Table 5 (``pvtv2 flops --task seg`` prints these).

    Args:
        models: backbone names (default: the seven PVT v2 variants of Table 5); names outside the table get
            ``None`` for the paper's figures.

    Returns:
        dicts with ``model``, ``head`` ("semantic_fpn"), ``params_m``, ``gflops``, ``gflops_no_attn_matmul``,
        ``paper_params_m``, ``paper_gflops``, ``paper_miou``, ``input_size``, ``note``.
    """
    import torch

    from ..analysis import complexity
    from .model import semantic_fpn

    rows = []
    for name in models or list(PAPER_TABLE5):
        with torch.device("meta"):
            model = semantic_fpn(backbone=name, num_classes=150)
        c = complexity(model, INPUT_SIZE)
        paper = PAPER_TABLE5.get(name)
        note = "mmcv MACs + attention products; interpolation not counted"
        if paper is not None:
            dp, dg = c.params_m - paper[0], c.gflops - paper[1]
            why = "paper's rounding" if abs(dg) < 0.06 else "see docs/segmentation.md"
            note = f"{dp:+.2f} M, {dg:+.2f} G vs paper ({why}); {note}"
        rows.append(
            {
                "model": name,
                "head": "semantic_fpn",
                "params_m": round(c.params_m, 2),
                "gflops": round(c.gflops, 2),
                "gflops_no_attn_matmul": round(c.gflops_without_attn_matmul, 2),
                "paper_params_m": paper[0] if paper else None,
                "paper_gflops": paper[1] if paper else None,
                "paper_miou": paper[2] if paper else None,
                "input_size": list(INPUT_SIZE),
                "note": note,
            }
        )
    return rows
