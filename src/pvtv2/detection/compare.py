"""Every registered detector trained the same way, side by side: the CPU-sized version of the paper's Tables 3
and 4 (``pvtv2 det compare``).

Each detector gets the same configuration (backbone, data, run length, batch, seed; its own released learning
rate unless the configuration sets one) and its own run directory; the table gives COCO AP, AP50, AP75,
AP_S/M/L (and mask AP), parameters, GFLOPs at the evaluation size, training images/s and inference ms per image.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._io import atomic_write, atomic_write_text
from ..data.scenes import evaluation_data
from ..engine import DistEnv, TrainResult, train
from .data.dataset import DetectionDataset
from .evaluation.complexity import detector_complexity
from .inference import load_detector
from .recipes import DetectionConfig, eval_transforms
from .registry import DETECTORS, get_detector
from .task import DetectionTask

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

COLUMNS = (("arch", "detector", "{}"), ("bbox_AP", "AP", "{:.3f}"), ("bbox_AP50", "AP50", "{:.3f}"),
           ("bbox_AP75", "AP75", "{:.3f}"), ("bbox_APs", "AP_S", "{:.3f}"), ("bbox_APm", "AP_M", "{:.3f}"),
           ("bbox_APl", "AP_L", "{:.3f}"), ("segm_AP", "mask AP", "{:.3f}"), ("params_m", "#P (M)", "{:.2f}"),
           ("gflops", "GFLOPs", "{:.1f}"), ("train_img_s", "train img/s", "{:.1f}"),
           ("infer_ms", "infer ms/img", "{:.0f}"), ("train_minutes", "train min", "{:.1f}"))


@torch.no_grad()
def inference_ms(model: torch.nn.Module, dataset: DetectionDataset, n: int = 20) -> float:
    """Median milliseconds per image of ``model`` (eval mode, batch 1) over ``n`` calls on the first images of
    ``dataset``."""
    model.eval()
    device = next(model.parameters()).device
    images = [dataset[i][0].as_subclass(torch.Tensor).to(device) for i in range(min(n, len(dataset)))]
    times = []
    for k in range(max(n, 1) + 1):
        t = time.perf_counter()
        model([images[k % len(images)]])
        if k:  # the first call warms up the allocator and the kernels
            times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def compare(cfg: DetectionConfig, out: str | Path, *, archs: list[str] | None = None,
            progress: bool = True) -> list[dict[str, Any]]:
    """Train and evaluate each detector of ``archs`` (default: every registered one) with ``cfg``; write
    ``table.md``, ``table.json`` and ``table.png`` into ``out`` (one run directory per detector beside them). A run
    that an earlier call with the same configuration finished in ``out`` is reused, so an interrupted comparison
    continues where it stopped."""
    out = Path(out)
    names = archs or list(DETECTORS)
    for name in names:
        get_detector(name)  # unknown names fail before anything trains
    rows = []
    for name in names:
        run_cfg = replace(cfg, arch=name)
        task = DetectionTask(run_cfg)
        result = finished_run(out / name, run_cfg)
        if result is None:
            # the comparison owns its folders: a run left there by another configuration is replaced
            result = train(task, out=out / name, progress=progress, overwrite=True)
        else:  # an earlier call with the same configuration got this far: its run is reused, not trained again
            log.info("%s: reusing the finished run in %s", name, result.run_dir)
            task.progress = progress
            task.setup(DistEnv())
        records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        speeds = [r["train_img_s"] for r in records if r.get("train_img_s")]
        model, _ = load_detector(result.checkpoint)
        cost = detector_complexity(name, cfg.backbone, (cfg.test_size, cfg.test_size),
                                   num_classes=task.data.num_classes, backbone_overrides=cfg.backbone_overrides,
                                   **run_cfg.builder_options())
        row = {"arch": name, **result.metrics, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
               "gflops": cost.gflops, "train_img_s": statistics.median(speeds) if speeds else float("nan"),
               "infer_ms": inference_ms(model, DetectionDataset(task.val_set.data, eval_transforms()))
               if task.val_set is not None else float("nan"),
               "train_minutes": sum(r.get("train_seconds", 0.0) for r in records) / 60, "run_dir": str(result.run_dir)}
        rows.append(row)
        log.info("%s: %s", name, format_row(row))
    write_table(rows, out, cfg)
    return rows


def finished_run(run_dir: Path, cfg: DetectionConfig) -> TrainResult | None:
    """The result of a finished run of exactly ``cfg`` in ``run_dir`` (left by an interrupted comparison), else
    None."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    wanted = json.loads(json.dumps(cfg.to_dict()))  # tuples as JSON lists, as config.json holds them
    if summary.get("stopped") or any(saved.get(k) != v for k, v in wanted.items()):
        return None
    return TrainResult(run_dir=run_dir, checkpoint=Path(summary["checkpoint"]), steps=summary["steps"],
                       epochs=summary["epochs"], metrics=summary["metrics"], best=summary.get("best"),
                       seconds=summary.get("seconds", 0.0))


def format_row(row: dict[str, Any]) -> str:
    return ", ".join(f"{title} {fmt.format(row[key])}" for key, title, fmt in COLUMNS[1:] if key in row)


def write_table(rows: list[dict[str, Any]], out: Path, cfg: DetectionConfig) -> None:
    """``table.md`` (Markdown), ``table.json`` and ``table.png`` (:func:`plot_table`)."""
    head = "| " + " | ".join(t for _, t, _ in COLUMNS) + " |"
    held_out = evaluation_data(cfg.data, cfg.val_data)
    lines = [f"Detectors on `{cfg.data}` (evaluated on `{held_out}`), backbone {cfg.backbone}, "
             f"{cfg.steps or cfg.epochs} {'steps' if cfg.steps else 'epochs'} of batch {cfg.batch_size}, "
             f"train size {list(cfg.train_sizes)}, test size {cfg.test_size}, seed {cfg.seed}.", "",
             head, "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[k]) if k in r else "-" for k, _, fmt in COLUMNS) + " |")
    atomic_write_text(out / "table.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "table.json", json.dumps(rows, indent=2))
    fig = plot_table(rows)
    atomic_write(out / "table.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def _value(row: Mapping[str, Any], key: str) -> float:
    """``row[key]`` as a number to draw: missing or non-finite values draw nothing (NaN)."""
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def plot_table(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """The comparison as a figure: held-out box AP (AP50 behind it, mask AP marked where predicted) and inference
    time, one horizontal bar per detector, the detectors named once on the shared vertical axis (in the table's
    order) so that long names never run into each other.

    Args:
        rows: the table's rows (``arch``, ``bbox_AP``, ``bbox_AP50``, ``segm_AP``, ``infer_ms``; others ignored).
    """
    from matplotlib.figure import Figure

    names = [str(r["arch"]) for r in rows]
    y = list(range(len(rows)))
    fig = Figure(figsize=(11, 1.6 + 0.42 * max(len(rows), 3)), layout="constrained")
    ax_ap, ax_ms = fig.subplots(1, 2, sharey=True, width_ratios=(1.5, 1))
    ap, ap50, mask = ([_value(r, k) for r in rows] for k in ("bbox_AP", "bbox_AP50", "segm_AP"))
    ax_ap.barh(y, ap50, height=0.75, color="tab:orange", alpha=0.35, label="box AP50")
    ax_ap.barh(y, ap, height=0.45, color="tab:blue", label="box AP")
    if any(math.isfinite(v) for v in mask):
        ax_ap.scatter(mask, y, marker="D", s=22, color="black", zorder=3, label="mask AP")
    for i, values in enumerate(zip(ap, ap50, mask)):
        if math.isfinite(values[0]):
            text = f"AP {values[0]:.3f}" + (f"\nmask {values[2]:.3f}" if math.isfinite(values[2]) else "")
            ax_ap.annotate(text, (max(v for v in values if math.isfinite(v)), i), xytext=(4, 0),
                           textcoords="offset points", va="center", fontsize=8)
    ax_ap.set_yticks(y, names)
    ax_ap.invert_yaxis()  # the table's order, top to bottom
    ax_ap.margins(x=0.25)  # room for the values
    ax_ap.set_xlabel("COCO AP on the held-out set")
    ax_ap.set_title("held-out COCO AP", fontsize=10)
    ax_ap.grid(axis="x", alpha=0.3)
    ms = [_value(r, "infer_ms") for r in rows]
    ax_ms.barh(y, ms, height=0.6, color="tab:gray")
    for i, v in enumerate(ms):
        if math.isfinite(v):
            ax_ms.annotate(f"{v:.0f}", (v, i), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax_ms.margins(x=0.12)
    ax_ms.tick_params(axis="y", left=False)
    ax_ms.set_xlabel("inference ms / image (CPU, batch 1)")
    ax_ms.set_title("inference time", fontsize=10)
    ax_ms.grid(axis="x", alpha=0.3)
    handles = dict(zip(*reversed(ax_ap.get_legend_handles_labels())))  # label -> handle
    order = [k for k in ("box AP", "box AP50", "mask AP") if k in handles]
    fig.legend([handles[k] for k in order], order, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    return fig
