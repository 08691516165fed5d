"""Figure 4: GFLOPs against input scale for ViT, PVT v1, ResNet-50 and PVT v2, plus measured batch-1 latency.

The paper only counts; we count (same convention as every other figure here, on the meta device) and also time a
forward pass on this machine, so the linear-SRA claim can be checked against the clock.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write
from .complexity import complexity

Row = dict[str, Any]


@dataclass(frozen=True)
class ScalingModel:
    """A model of the figure: its label and a builder (random weights; no download)."""

    label: str
    build: Callable[[], nn.Module]


def _timm_vit(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        # dynamic_img_size: the position embedding is resized to any input (interpolation is not counted);
        # dynamic_img_pad: sizes that are not a multiple of the patch are zero-padded, as PVT's maps are ceil-divided
        return timm.create_model(name, pretrained=False, dynamic_img_size=True, dynamic_img_pad=True)

    return build


def _resnet50() -> nn.Module:
    import torchvision

    return torchvision.models.resnet50(weights=None)


def _registered(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from ..models import create_model

        return create_model(name)

    return build


SCALING_MODELS: dict[str, ScalingModel] = {
    "vit_small_16": ScalingModel("ViT-Small/16", _timm_vit("vit_small_patch16_224")),
    "vit_small_32": ScalingModel("ViT-Small/32", _timm_vit("vit_small_patch32_224")),
    "pvt_v1_small": ScalingModel("PVT v1-Small", _registered("pvt_v1_small")),
    "resnet50": ScalingModel("ResNet-50", _resnet50),
    "pvt_v2_b2": ScalingModel("PVT v2-B2", _registered("pvt_v2_b2")),
    "pvt_v2_b2_li": ScalingModel("PVT v2-B2-Li", _registered("pvt_v2_b2_li")),
}
DEFAULT_SIZES: tuple[int, ...] = (224, 448, 672, 896, 1120)  # 1x to 5x the side, as the paper's axis


def scaling_rows(
    models: Sequence[str] | None = None,
    sizes: Sequence[int] = DEFAULT_SIZES,
    *,
    latency_repeats: int = 3,
    latency_max_size: int | None = None,
    threads: int | None = None,
    attn_matmul: bool = True,
    progress: bool = False,
) -> list[Row]:
    """GFLOPs (and, if ``latency_repeats > 0``, median batch-1 latency) of each model at each square size.

    Args:
        models: keys of :data:`SCALING_MODELS` (default: all six).
        sizes: square input sides; ``growth`` is relative to the smallest.
        latency_repeats: timed forward passes per point after one warm-up (0: count only).
        latency_max_size: time only sizes up to this (``None``: all); larger ones are only counted.
        threads: CPU threads while timing (``None``: torch's setting); 1 gives steadier numbers on a busy machine.
        attn_matmul: count attention products (the paper's convention).
        progress: show a tqdm bar while timing.
    """
    keys = list(models or SCALING_MODELS)
    unknown = [k for k in keys if k not in SCALING_MODELS]
    if unknown:
        raise ValueError(f"unknown scaling model(s) {unknown}; choose from {list(SCALING_MODELS)}")
    sizes = sorted(int(s) for s in sizes)
    timed_sizes = [s for s in sizes if latency_repeats > 0 and (latency_max_size is None or s <= latency_max_size)]
    saved_threads = torch.get_num_threads()
    bar = _bar(len(keys) * len(timed_sizes), progress and bool(timed_sizes))
    try:
        if threads is not None and timed_sizes:
            torch.set_num_threads(threads)
        return [row for key in keys for row in _model_rows(key, sizes, timed_sizes, latency_repeats, attn_matmul, bar)]
    finally:
        torch.set_num_threads(saved_threads)
        if bar is not None:
            bar.close()


def _model_rows(
    key: str, sizes: list[int], timed_sizes: list[int], repeats: int, attn_matmul: bool, bar: Any
) -> list[Row]:
    spec = SCALING_MODELS[key]
    with torch.device("meta"):
        counted = spec.build()
    timed = spec.build().eval() if timed_sizes else None
    rows: list[Row] = []
    for size in sizes:
        c = complexity(counted, size, attn_matmul)
        latency = measure_latency(timed, size, repeats) if timed is not None and size in timed_sizes else None
        rows.append(
            {
                "model": key,
                "label": spec.label,
                "size": size,
                "pixels_ratio": round((size / sizes[0]) ** 2, 4),
                "params_m": round(c.params_m, 3),
                "gflops": round(c.gflops, 4),
                "attn_gflops": round(c.attn_matmul_macs / 1e9, 4),
                "growth": round(c.gflops / (rows[0]["gflops"] if rows else c.gflops), 4),
                "latency_ms": None if latency is None else round(latency, 2),
                "threads": None if latency is None else torch.get_num_threads(),
            }
        )
        if bar is not None and latency is not None:
            bar.set_postfix_str(f"{spec.label} {size}px")
            bar.update()
    return rows


def measure_latency(model: nn.Module, size: int, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time in ms of ``model`` on one random ``size x size`` image (inference mode, batch 1)."""
    device = next(model.parameters()).device
    x = torch.randn(1, 3, size, size, device=device)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def growth_order(rows: Sequence[Row]) -> list[str]:
    """Model keys from the fastest- to the slowest-growing (GFLOPs at the largest size / at the smallest)."""
    last: dict[str, Row] = {}
    for r in rows:
        if r["model"] not in last or r["size"] > last[r["model"]]["size"]:
            last[r["model"]] = r
    return sorted(last, key=lambda k: last[k]["growth"], reverse=True)


def plot_scaling(rows: Sequence[Row], path: str | os.PathLike[str], dpi: int = 80) -> Path:
    """Figure 4 as a PNG: GFLOPs, GFLOPs relative to the smallest size, and (if measured) latency, against size."""
    from matplotlib.figure import Figure

    series: dict[str, list[Row]] = {}
    for r in rows:
        series.setdefault(r["label"], []).append(r)
    threads = next((r["threads"] for r in rows if r.get("latency_ms") is not None), None)
    timed = threads is not None
    fig = Figure(figsize=(15 if timed else 10, 4.2), layout="constrained")
    axes = fig.subplots(1, 3 if timed else 2)
    panels = [("gflops", "GFLOPs (multiply-accumulates)"), ("growth", "GFLOPs / GFLOPs at the smallest size")]
    if timed:
        panels.append(("latency_ms", f"batch-1 latency (ms, median, {threads} threads)"))
    for ax, (key, ylabel) in zip(axes, panels):
        for label, pts in series.items():
            pts = [p for p in pts if p.get(key) is not None]
            ax.plot([p["size"] for p in pts], [p[key] for p in pts], marker="o", markersize=3, label=label)
        ax.set_xlabel("input size (square, px)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title("Figure 4: GFLOPs against input scale", fontsize=10)
    axes[1].set_title("growth relative to the smallest input", fontsize=10)
    if timed:
        axes[2].set_title("measured on this machine", fontsize=10)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="latency", unit="point")
