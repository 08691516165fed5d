"""The cost tables ``pvtv2 flops`` prints: ours beside the released code's and the paper's figures; text and CSV."""

from __future__ import annotations

import csv
import functools
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_text
from ..models import create_model, list_models
from ..weights.release import release
from .complexity import Complexity, complexity
from .paper import RELEASED_GFLOPS, RELEASED_GFLOPS_NO_MATMUL, TABLE2, TABLE6, TABLE6_DETECTION_SIZE

Row = dict[str, Any]


def count_registered(
    name: str, input_size: int | Sequence[int] = 224, attn_matmul: bool = True, num_classes: int = 1000
) -> Complexity:
    """:func:`complexity` of a registered model built on the meta device (no memory, no arithmetic); cached."""
    return _count_registered(name, _pair(input_size), attn_matmul, num_classes)


@functools.lru_cache(maxsize=256)
def _count_registered(name: str, size: tuple[int, int], attn_matmul: bool, num_classes: int) -> Complexity:
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    return complexity(model, size, attn_matmul)


def classification_rows(
    models: Sequence[str] | None = None, input_size: int | Sequence[int] = 224, attn_matmul: bool = True
) -> list[Row]:
    """One row per model: params (M), our GFLOPs, and at 224x224 the released-code and Table 2 figures.

    Args:
        models: registered names (default: every ``pvt_v2_*``).
        input_size: ``(H, W)`` or a square side; the published figures exist only for 224x224.
        attn_matmul: count the attention products (the published convention) or not.
    """
    size = _pair(input_size)
    at_224 = size == (224, 224)
    released = RELEASED_GFLOPS if attn_matmul else RELEASED_GFLOPS_NO_MATMUL
    rows = []
    for name in models or list_models("pvt_v2_*"):
        c = count_registered(name, size, attn_matmul)
        paper = TABLE2.get(name)
        row: Row = {
            "model": name,
            "input_size": f"{size[0]}x{size[1]}",
            "params_m": round(c.params_m, 3),
            "gflops": round(c.gflops, 4),
            "released_gflops": released.get(name) if at_224 else None,
            "paper_params_m": paper.params_m if paper else None,
            "paper_gflops": paper.gflops if paper and at_224 and attn_matmul else None,
            "attn_matmul": attn_matmul,
            "note": paper.note if paper else "",
        }
        row["diff_released"] = _diff(row["gflops"], row["released_gflops"])
        row["diff_paper"] = _diff(row["gflops"], row["paper_gflops"])
        rows.append(row)
    return rows


def table6_rows(attn_matmul: bool = True) -> list[Row]:
    """Table 6, PVT v1-Small -> +OPE -> ++CFFN -> +++LSRA, as classifiers at 224 and backbones at 1280x800.

    The paper's params / GFLOPs of this table are for RetinaNet at 1280x800; we give the classifier at 224 and
    the headless backbone at 1280x800 (the part of the detector the three designs change).
    """
    rows = []
    for name, paper in TABLE6.items():
        cls = count_registered(name, 224, attn_matmul)
        det = count_registered(name, TABLE6_DETECTION_SIZE, attn_matmul, num_classes=0)
        rows.append(
            {
                "model": name,
                "design": paper.note,
                "params_m": round(cls.params_m, 3),
                "gflops": round(cls.gflops, 4),
                "backbone_params_m": round(det.params_m, 3),
                "backbone_gflops_1280x800": round(det.gflops, 2),
                "paper_top1": paper.top1,
                "paper_retinanet_params_m": paper.params_m,
                "paper_retinanet_gflops": paper.gflops,
                "released_top1": rel.top1 if (rel := release(name)) else None,
            }
        )
    return rows


def format_table(rows: Sequence[Row], columns: Sequence[tuple[str, str, str]] | None = None) -> str:
    """Rows as a fixed-width text table; ``columns`` = (key, header, format spec), default: every key as is."""
    if not rows:
        return "(no rows)"
    columns = columns or [(k, k, "") for k in rows[0]]
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append(["-" if r.get(k) is None else format(r[k], f) for k, _, f in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    left = [not f for _, _, f in columns]  # text columns read left-aligned, numbers right-aligned
    lines = ["  ".join(c.ljust(w) if lj else c.rjust(w) for c, w, lj in zip(line, widths, left)).rstrip()
             for line in cells]  # fmt: skip
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def rows_to_csv(rows: Sequence[Row]) -> str:
    """CSV text with a header of the union of the rows' keys (in first-seen order); ``None`` -> empty cell."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if r.get(k) is None else r[k]) for k in keys} for r in rows)
    return buf.getvalue()


def write_csv(rows: Sequence[Row], path: str | os.PathLike[str]) -> Path:
    """Write :func:`rows_to_csv` atomically."""
    return atomic_write_text(path, rows_to_csv(rows))


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _diff(ours: float, theirs: float | None) -> float | None:
    return None if theirs is None else round(ours - theirs, 4)
