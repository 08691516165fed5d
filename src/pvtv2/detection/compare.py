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
            seeds: Sequence[int] | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Train and evaluate each detector of ``archs`` (default: every registered one) with ``cfg``, once per seed of
    ``seeds`` (default: ``cfg.seed``); write ``table.md``, ``table.json`` and ``table.png`` into ``out`` (one run
    directory per detector and seed beside them: ``out/<arch>``, or ``out/<arch>-seed<S>`` for several seeds).

    With several seeds a row holds each metric's mean over the seeds, its spread (``<metric>_spread``: max - min)
    and the runs' own figures (``seeds``); the table says which pairs of detectors the seeds rank differently.

    A run that an earlier call with the same configuration finished in ``out`` is reused, and one it left
    unfinished is continued from its ``last.pth`` (runs write one every ``ckpt_every`` steps), so a long comparison
    can be stopped and started again, across machines' lifetimes, without losing more than ``ckpt_every`` steps."""
    out = Path(out)
    names = archs or list(DETECTORS)
    seeds = list(seeds or [cfg.seed])
    for name in names:
        get_detector(name)  # unknown names fail before anything trains
    rows = []
    for name in names:
        runs = [_run_one(replace(cfg, arch=name, seed=seed), out / (name if len(seeds) == 1 else f"{name}-seed{seed}"),
                         progress) for seed in seeds]
        row = _merge(runs) if len(runs) > 1 else runs[0]
        rows.append(row)
        log.info("%s: %s", name, format_row(row))
    write_table(rows, out, replace(cfg, seed=seeds[0]), seeds)
    return rows


def _run_one(run_cfg: DetectionConfig, run_dir: Path, progress: bool) -> dict[str, Any]:
    """Train (or reuse, or continue) one detector's run in ``run_dir`` and measure it: one row of the table."""
    name = run_cfg.arch
    task = DetectionTask(run_cfg)
    result = finished_run(run_dir, run_cfg)
    if result is None:
        resume = unfinished_run(run_dir, run_cfg)
        if resume is not None:
            log.info("%s: continuing the unfinished run in %s", name, run_dir)
        # the comparison owns its folders: a run left there by another configuration is replaced
        result = train(task, out=run_dir, resume=resume, progress=progress, overwrite=resume is None)
    else:  # an earlier call with the same configuration got this far: its run is reused, not trained again
        log.info("%s: reusing the finished run in %s", name, result.run_dir)
        task.progress = progress
        task.setup(DistEnv())
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["train_img_s"] for r in records if r.get("train_img_s")]
    model, _ = load_detector(result.checkpoint)
    cost = detector_complexity(name, run_cfg.backbone, (run_cfg.test_size, run_cfg.test_size),
                               num_classes=task.data.num_classes, backbone_overrides=run_cfg.backbone_overrides,
                               **run_cfg.builder_options())
    return {"arch": name, "seed": run_cfg.seed, **result.metrics,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflops": cost.gflops, "train_img_s": statistics.median(speeds) if speeds else float("nan"),
            "infer_ms": inference_ms(model, DetectionDataset(task.val_set.data, eval_transforms()))
            if task.val_set is not None else float("nan"),
            "train_minutes": sum(r.get("train_seconds", 0.0) for r in records) / 60, "run_dir": str(result.run_dir)}


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One detector's runs (one per seed) as one row: metric means and spreads, the runs kept under ``seeds``."""
    row: dict[str, Any] = {"arch": runs[0]["arch"]}
    for key in runs[0]:
        values = [r[key] for r in runs]
        if isinstance(values[0], (int, float)) and key != "seed":
            row[key] = statistics.fmean(values)
            if key.startswith(("bbox_", "segm_")):
                row[f"{key}_spread"] = max(values) - min(values)
    row["seeds"] = runs
    return row


def _same_config(run_dir: Path, cfg: DetectionConfig, ignore: frozenset[str] = frozenset()) -> bool:
    """Whether ``run_dir/config.json`` holds ``cfg`` (but for the fields in ``ignore``)."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    wanted = json.loads(json.dumps(cfg.to_dict()))  # tuples as JSON lists, as config.json holds them
    return all(saved.get(k) == v for k, v in wanted.items() if k not in ignore)


def unfinished_run(run_dir: Path, cfg: DetectionConfig) -> Path | None:
    """``last.pth`` of a run of exactly ``cfg`` in ``run_dir`` that stopped before its end (interrupted, killed,
    or its machine lost), to continue from; else None."""
    last = run_dir / "last.pth"
    how_driven = cfg.RESUMABLE - {"epochs", "steps"}  # stop_after, threads, ...: not the schedule or the result
    return last if last.is_file() and _same_config(run_dir, cfg, how_driven) else None


def finished_run(run_dir: Path, cfg: DetectionConfig) -> TrainResult | None:
    """The result of a finished run of exactly ``cfg`` in ``run_dir`` (left by an interrupted comparison), else
    None."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("stopped") or not _same_config(run_dir, cfg):
        return None
    return TrainResult(run_dir=run_dir, checkpoint=Path(summary["checkpoint"]), steps=summary["steps"],
                       epochs=summary["epochs"], metrics=summary["metrics"], best=summary.get("best"),
                       seconds=summary.get("seconds", 0.0))


def ranking_disagreements(rows: Sequence[Mapping[str, Any]], key: str = "bbox_AP") -> list[tuple[str, str]]:
    """Pairs of detectors whose order by ``key`` differs between two seeds (rows from :func:`compare` with several
    seeds): the pairs the comparison cannot rank."""
    pairs = []
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            signs = {math.copysign(1, ra[key] - rb[key]) for ra, rb in zip(a.get("seeds", []), b.get("seeds", []))
                     if ra[key] != rb[key]}
            if len(signs) > 1:
                pairs.append((str(a["arch"]), str(b["arch"])))
    return pairs


def format_row(row: dict[str, Any]) -> str:
    return ", ".join(f"{title} {fmt.format(row[key])}" for key, title, fmt in COLUMNS[1:] if key in row)


def write_table(rows: list[dict[str, Any]], out: Path, cfg: DetectionConfig,
                seeds: Sequence[int] | None = None) -> None:
    """``table.md`` (Markdown), ``table.json`` and ``table.png`` (:func:`plot_table`); with several ``seeds`` the
    metrics are means ``± half the spread`` and a line names the pairs the seeds rank differently."""
    seeds = list(seeds or [cfg.seed])
    head = "| " + " | ".join(t for _, t, _ in COLUMNS) + " |"
    held_out = evaluation_data(cfg.data, cfg.val_data)
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± half the spread over seeds {seeds}"
    lines = [f"Detectors on `{cfg.data}` (evaluated on `{held_out}`), backbone {cfg.backbone}, "
             f"{cfg.steps or cfg.epochs} {'steps' if cfg.steps else 'epochs'} of batch {cfg.batch_size}, "
             f"train size {list(cfg.train_sizes)}, test size {cfg.test_size}, {seed_text}.", "",
             head, "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r, k, fmt) for k, _, fmt in COLUMNS) + " |")
    if len(seeds) > 1:
        pairs = ranking_disagreements(rows)
        lines += ["", "Ranked by box AP, the seeds disagree on: " + ", ".join(f"{a} / {b}" for a, b in pairs) + "."
                  if pairs else f"Ranked by box AP, every seed gives the same order: {_order(rows)}."]
    atomic_write_text(out / "table.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "table.json", json.dumps(rows, indent=2))
    fig = plot_table(rows)
    atomic_write(out / "table.png", lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def _cell(row: Mapping[str, Any], key: str, fmt: str) -> str:
    if key not in row:
        return "-"
    spread = row.get(f"{key}_spread")
    return fmt.format(row[key]) + (f" ± {fmt.format(spread / 2)}" if spread is not None else "")


def _order(rows: Sequence[Mapping[str, Any]]) -> str:
    return " > ".join(str(r["arch"]) for r in sorted(rows, key=lambda r: -_value(r, "bbox_AP")))


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
    half = [_value(r, "bbox_AP_spread") / 2 for r in rows]  # several seeds: the bar's whisker spans them
    ax_ap.barh(y, ap, height=0.45, color="tab:blue", label="box AP",
               xerr=half if any(math.isfinite(h) for h in half) else None, error_kw={"elinewidth": 1, "capsize": 3})
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
