"""``pvtv2 bench``: every path side by side in one interleaved run, against the machine's own matmul roofline."""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_text
from ..errors import PVTError
from ..export.onnx import ort_spinning
from ..models import create_model
from ..precision import DTYPES
from ..runtime import tune_cpu_allocator
from .measure import exact_rss_accounting, gemm_calls, gmacs, interleaved, machine, peak_memory_mb
from .paths import DEFAULT_PATHS, PATHS, PRECISION_OF, TRAIN_PATHS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure.

    Args:
        models: registered model names.
        sizes: square input sides.
        batches: batch sizes of the inference runs.
        paths: inference paths (see :data:`pvtv2.bench.paths.PATHS`).
        precisions: keep the paths of these precisions only (``"fp32"``, ``"bf16"``, ``"int8"``; see
            ``PRECISION_OF``).
        repeats: timed interleaved rounds (medians are reported).
        warmup: untimed rounds before them.
        threads: CPU threads for every path (default: PyTorch's default).
        device: ``"cpu"`` or ``"cuda"``.
        train_models: models whose training step (forward, backward, AdamW) is compared with timm's.
        train_paths: implementations in the training comparison.
        train_batch: batch of the training step.
        train_size: input side of the training step.
        train_repeats: timed training steps per path.
        dense_train: dense models whose training step is timed as the scenes recipes run it (``"retinanet"``,
            ``"semantic_fpn"``: PVT v2-B0, FPN and heads 64 wide, fp32 and bf16 autocast), on seeded synthetic
            scenes of ``dense_batch`` images of ``dense_size`` px.
        dense_batch, dense_size: their batch and image side (the scenes recipes: 8 and 256).
        depths: override the models' depths (the smoke mode uses one block per stage).
        gemm_n: side of the square matmul that measures the roofline.
        tune_malloc: let glibc recycle large allocations (:func:`pvtv2.runtime.tune_cpu_allocator`) for every path.
    """

    models: tuple[str, ...] = ("pvt_v2_b0", "pvt_v2_b2")
    sizes: tuple[int, ...] = (224,)
    batches: tuple[int, ...] = (1, 16)
    paths: tuple[str, ...] = DEFAULT_PATHS
    precisions: tuple[str, ...] = ("fp32", "bf16", "int8")
    repeats: int = 7
    warmup: int = 2
    threads: int | None = None
    device: str = "cpu"
    train_models: tuple[str, ...] = ("pvt_v2_b0",)
    train_paths: tuple[str, ...] = ("pvtv2", "timm")
    train_batch: int = 32
    train_size: int = 224
    train_repeats: int = 5
    dense_train: tuple[str, ...] = ("retinanet", "semantic_fpn")
    dense_batch: int = 8
    dense_size: int = 256
    depths: tuple[int, int, int, int] | None = None
    gemm_n: int = 2048
    tune_malloc: bool = True


# Tiny sizes, one repeat: what the test suite runs so that the benchmark cannot rot.
SMOKE = BenchConfig(
    models=("pvt_v2_b0",), sizes=(64,), batches=(1, 2),
    paths=("pvtv2", "pvtv2-plain", "pvtv2-onnxruntime", "timm", "hf"),
    repeats=1, warmup=1, train_batch=2, train_size=64, train_repeats=1, dense_batch=2, dense_size=64,
    depths=(1, 1, 1, 1), gemm_n=256,
)


@dataclass
class BenchResult:
    """Everything one run measured (``to_json`` / ``table``)."""

    config: BenchConfig
    machine: dict[str, Any]
    date: str
    inference: list[dict[str, Any]] = field(default_factory=list)
    training: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    def table(self) -> str:
        return format_tables(self)


def _model(name: str, cfg: BenchConfig, device: torch.device) -> Any:
    overrides = {"depths": cfg.depths} if cfg.depths else {}
    torch.manual_seed(0)
    return create_model(name, **overrides).to(device).eval()


def _max_diff(out: Any, ref: torch.Tensor) -> float:
    out = out if isinstance(out, torch.Tensor) else out[0]
    return (out.float().cpu() - ref.float().cpu()).abs().max().item()


def run_benchmark(cfg: BenchConfig = BenchConfig(), progress: bool = True) -> BenchResult:
    """Run the inference and training comparisons of ``cfg``; see :class:`BenchConfig`."""
    unknown = sorted(set(cfg.paths) - set(PATHS))
    if unknown:
        raise PVTError(f"unknown bench path(s) {unknown}; choose from {', '.join(PATHS)}")
    strange = sorted(set(cfg.dense_train) - set(DENSE_TASKS))
    if strange:
        raise PVTError(f"unknown dense training task(s) {strange}; choose from {', '.join(DENSE_TASKS)}")
    odd = sorted(set(cfg.precisions) - {"fp32", "bf16", "int8"})
    if odd:
        raise PVTError(f"unknown bench precision(s) {odd}; choose from fp32, bf16, int8")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PVTError("--device cuda but CUDA is not available here; use --device cpu")
    result = BenchResult(cfg, machine(), datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    if device.type == "cpu" and cfg.tune_malloc:
        result.machine["malloc_tuned"] = tune_cpu_allocator()
    say = log.info if progress else log.debug
    # int8 rows are read against the fp32 matmul (no int8 matmul is timed)
    gemm = {p: gemm_calls(cfg.gemm_n, device, DTYPES[p]) for p in dict.fromkeys(("fp32", *cfg.precisions))
            if p in DTYPES}
    memory: list[tuple[dict[str, Any], Any]] = []  # (result row, one call): measured after every timing
    result.machine["ort_spinning"] = False
    with ort_spinning(False):  # spinning onnxruntime threads would hold the cores while the next path is timed
        for name in cfg.models:
            memory += _inference(name, cfg, device, gemm, result, say)
    for name in cfg.train_models:
        memory += _training(name, cfg, device, result, say)
    for task in cfg.dense_train:
        memory += _dense_training(task, cfg, device, result, say)
    if device.type == "cpu":
        exact_rss_accounting()
    say("bench: peak memory of %d calls", len(memory))
    for row, call in memory:
        row["peak_mb"] = peak_memory_mb(call, device)
    return result


def _inference(name: str, cfg: BenchConfig, device: torch.device, gemm: dict[str, Any],
               result: BenchResult, say: Any) -> list[tuple[dict[str, Any], Any]]:
    model = _model(name, cfg, device)
    memory = []
    first = torch.randn(cfg.batches[0], 3, cfg.sizes[0], cfg.sizes[0], device=device)
    fns = {}
    for path in (p for p in cfg.paths if PRECISION_OF[p] in cfg.precisions):
        say("bench: preparing %s %s", name, path)
        try:
            fn = PATHS[path](model, name, first)
        except PVTError as e:
            fn, why = None, str(e)
        else:
            why = "library not installed or variant not available"
        if fn is None:
            result.skipped.append(f"{name} {path}: {why}")
            continue
        fns[path] = fn
    for size in cfg.sizes:
        work = gmacs(model, (size, size))
        for batch in cfg.batches:
            x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch), device="cpu").to(device)
            with torch.inference_mode():
                ref = model(x)
            calls = {path: (lambda fn=fn, x=x: fn(x)) for path, fn in fns.items()}
            diffs = {path: _max_diff(fn(x), ref) for path, fn in fns.items()}
            say("bench: timing %s %dx%d batch %d (%d rounds)", name, size, size, batch, cfg.repeats)
            timings = interleaved(calls, cfg.repeats, cfg.warmup, device)
            # the matmuls right after, in rounds of their own (their 50 MB would flush the models' caches)
            gemm_all = {g: c for calls_p in gemm.values() for g, c in calls_p.items()}
            gemm_t = interleaved({g: fn for g, (fn, _) in gemm_all.items()}, cfg.repeats, 1, device)
            gflops = {g: flops / gemm_t[g].median / 1e9 for g, (_, flops) in gemm_all.items()}  # GFLOP/s
            base = {p: timings[p].median for p in ("timm", "pvtv2") if p in timings}
            for path, t in timings.items():
                ran = getattr(fns[path], "precision", PRECISION_OF[path])  # fp32 where bf16 is not native
                same = {g: gflops[g] for g in gemm.get(ran, gemm["fp32"])}
                roof, mm = max(same.values()), next(iter(same.values()))  # torch.mm is listed first
                peers = [timings[p].median for p in timings if PRECISION_OF[p] == PRECISION_OF[path]
                         and not p.startswith("pvtv2")]
                lo, hi = t.spread()
                row = {
                    "model": name, "size": size, "batch": batch, "path": path, "precision": ran,
                    "img_per_s": batch / t.median, "ms_per_batch": t.median * 1e3,
                    "ms_min": lo * 1e3, "ms_max": hi * 1e3,
                    "x_timm": base["timm"] / t.median if "timm" in base else None,
                    "x_eager": base["pvtv2"] / t.median if "pvtv2" in base else None,
                    "x_best_peer": min(peers) / t.median if peers else None,  # same asked-for precision
                    "gmacs_per_image": work, "gflop_per_s": 2 * work * batch / t.median,
                    "gemm_gflop_per_s": roof, "gemm_by_backend": gflops, "roofline": 2 * work * batch / t.median / roof,
                    "roofline_torch_mm": 2 * work * batch / t.median / mm,
                    "max_abs_diff": diffs[path], "peak_mb": None,
                }
                result.inference.append(row)
                memory.append((row, calls[path]))
    return memory


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _training(name: str, cfg: BenchConfig, device: torch.device, result: BenchResult,
              say: Any) -> list[tuple[dict[str, Any], Any]]:
    ours = _model(name, cfg, device)
    calls = {}
    for path in cfg.train_paths:
        make = TRAIN_PATHS.get(path)
        if make is None:
            raise PVTError(f"unknown training path {path!r}; choose from {', '.join(TRAIN_PATHS)}")
        model = make(ours, name)
        if model is None:
            result.skipped.append(f"{name} training {path}: library not installed or variant not available")
            continue
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(cfg.train_batch, 3, cfg.train_size, cfg.train_size, generator=g).to(device)
        y = torch.randint(0, 1000, (cfg.train_batch,), generator=g).to(device)
        calls[path] = lambda m=model, o=opt, x=x, y=y: _train_step(m, o, x, y)
    say("bench: timing %s training step, batch %d (%d rounds)", name, cfg.train_batch, cfg.train_repeats)
    timings = interleaved(calls, cfg.train_repeats, 1, device)
    memory = []
    for path, t in timings.items():
        lo, hi = t.spread()
        row = {
            "model": name, "size": cfg.train_size, "batch": cfg.train_batch, "path": path,
            "img_per_s": cfg.train_batch / t.median, "ms_per_step": t.median * 1e3,
            "ms_min": lo * 1e3, "ms_max": hi * 1e3,
            "x_timm": timings["timm"].median / t.median if "timm" in timings else None,
            "peak_mb": None,
        }
        result.training.append(row)
        memory.append((row, calls[path]))
    return memory


DENSE_TASKS = ("retinanet", "semantic_fpn")


def _dense_step(task: str, cfg: BenchConfig, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """The scenes recipe's model of ``task`` (random weights) and its loss on a seeded synthetic batch."""
    overrides: dict[str, Any] = {"depths": cfg.depths} if cfg.depths else {}
    g = torch.Generator().manual_seed(0)
    n, side = cfg.dense_batch, cfg.dense_size
    images = torch.rand(n, 3, side, side, generator=g)
    if task == "semantic_fpn":
        from ..segmentation import get_recipe as seg_recipe
        from ..segmentation import semantic_fpn

        r = seg_recipe("scenes")
        model = semantic_fpn(backbone="pvt_v2_b0", num_classes=11, backbone_overrides=overrides,
                             fpn_channels=r.fpn_channels, head_channels=r.head_channels, norm=r.head_norm,
                             dropout=r.head_dropout).to(device)
        x, y = images.to(device), torch.randint(0, 11, (n, side, side), generator=g).to(device)
        return model, lambda: torch.nn.functional.cross_entropy(model(x), y)
    from ..detection import build_detector
    from ..detection import get_recipe as det_recipe

    options = det_recipe("scenes").replace(arch=task).builder_options()  # the recipe's, for this detector
    model = build_detector(task, backbone="pvt_v2_b0", num_classes=10, backbone_overrides=overrides,
                           min_size=side, max_size=side, **options).to(device)
    xy = torch.rand(n, 4, 2, generator=g) * side * 0.6  # 4 objects per scene, 10-40% of the side
    wh = (0.1 + 0.3 * torch.rand(n, 4, 2, generator=g)) * side
    targets = [{"boxes": torch.cat([xy[i], xy[i] + wh[i]], 1).to(device),
                "labels": torch.randint(1, 11, (4,), generator=g).to(device)} for i in range(n)]
    batch = [im.to(device) for im in images]
    return model, lambda: sum(model(batch, targets).values())


def _dense_training(task: str, cfg: BenchConfig, device: torch.device, result: BenchResult,
                    say: Any) -> list[tuple[dict[str, Any], Any]]:
    """The training step of a dense scenes model in fp32 and under bf16 autocast (losses in fp32)."""
    calls = {}
    for path, dtype in (("pvtv2", None), ("pvtv2-bf16", torch.bfloat16)):
        model, loss_of = _dense_step(task, cfg, device)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)

        def step(model: torch.nn.Module = model, opt: Any = opt, loss_of: Any = loss_of, dtype: Any = dtype) -> None:
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = loss_of()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        calls[path] = step
    say("bench: timing the %s scenes training step, batch %d (%d rounds)", task, cfg.dense_batch, cfg.train_repeats)
    timings = interleaved(calls, cfg.train_repeats, 1, device)
    memory = []
    for path, t in timings.items():
        lo, hi = t.spread()
        row = {"model": f"{task}_b0", "size": cfg.dense_size, "batch": cfg.dense_batch, "path": path,
               "img_per_s": cfg.dense_batch / t.median, "ms_per_step": t.median * 1e3, "ms_min": lo * 1e3,
               "ms_max": hi * 1e3, "x_timm": None, "x_fp32": timings["pvtv2"].median / t.median, "peak_mb": None}
        result.training.append(row)
        memory.append((row, calls[path]))
    return memory


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_tables(result: BenchResult) -> str:
    """The human-readable report: one block per (model, size, batch), then the training steps."""
    lines = []
    head = (f"{'path':<19} {'ran':>4} {'img/s':>8} {'ms (min-max)':>19} {'x timm':>7} {'x eager':>8} {'x peer':>7} "
            f"{'roofline':>8} {'of mm':>6} {'max|diff|':>9} {'peak MB':>8}")
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in result.inference:
        groups.setdefault((row["model"], row["size"], row["batch"]), []).append(row)
    for (model, size, batch), rows in groups.items():
        r0 = rows[0]
        gemms = ", ".join(f"{k} {v:.0f}" for k, v in r0["gemm_by_backend"].items())
        lines.append(f"\n{model} {size}x{size} batch {batch}: {r0['gmacs_per_image']:.2f} GMACs/image, "
                     f"matmul GFLOP/s {gemms} (roofline: the precision each path ran in)")
        lines.append(head)
        for r in rows:
            spread = f"{r['ms_per_batch']:.1f} ({r['ms_min']:.0f}-{r['ms_max']:.0f})"
            lines.append(f"{r['path']:<19} {r['precision']:>4} {r['img_per_s']:>8.2f} {spread:>19} "
                         f"{_fmt(r['x_timm'], '.2f'):>7} {_fmt(r['x_eager'], '.2f'):>8} {_fmt(r['x_best_peer'], '.2f'):>7} "
                         f"{r['roofline']:>7.0%} {r['roofline_torch_mm']:>6.0%} "
                         f"{r['max_abs_diff']:>9.1e} "
                         f"{_fmt(r['peak_mb'], '.0f'):>8}")
    if result.training:
        lines.append("\ntraining step (forward, backward, AdamW)")
        lines.append(f"{'model':<16} {'path':<10} {'batch':>5} {'size':>5} {'img/s':>8} {'ms (min-max)':>21} "
                     f"{'x timm':>7} {'x fp32':>7} {'peak MB':>8}")
        for r in result.training:
            spread = f"{r['ms_per_step']:.0f} ({r['ms_min']:.0f}-{r['ms_max']:.0f})"
            lines.append(f"{r['model']:<16} {r['path']:<10} {r['batch']:>5} {r['size']:>5} {r['img_per_s']:>8.2f} "
                         f"{spread:>21} {_fmt(r['x_timm'], '.2f'):>7} {_fmt(r.get('x_fp32'), '.2f'):>7} "
                         f"{_fmt(r['peak_mb'], '.0f'):>8}")
    for s in result.skipped:
        lines.append(f"skipped: {s}")
    m = result.machine
    lines.append(f"\n{result.date}, {m.get('cpu')}, {m.get('threads')} threads, torch {m.get('torch')}, "
                 f"malloc tuned: {m.get('malloc_tuned', False)}, onnxruntime spinning: {m.get('ort_spinning', True)}, "
                 f"load average {m.get('loadavg')}")
    return "\n".join(lines).lstrip("\n")


def save_json(result: BenchResult, path: str | os.PathLike[str]) -> Path:
    """Write the result as JSON (atomically)."""
    return atomic_write_text(path, result.to_json())


def smoke_config(**changes: Any) -> BenchConfig:
    """:data:`SMOKE` with some fields changed."""
    return replace(SMOKE, **changes)


def parse_ints(values: Sequence[str] | None) -> tuple[int, ...] | None:
    """``["1", "16"]`` or ``["1,16"]`` -> ``(1, 16)``."""
    if not values:
        return None
    return tuple(int(v) for item in values for v in str(item).split(",") if v)
