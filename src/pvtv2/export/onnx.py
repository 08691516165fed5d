"""ONNX export (dynamic batch, height and width) and its onnxruntime parity check.

The graph is captured with ``torch.export`` (the dynamo exporter), so every shape-dependent value (the ceil-divided
stage grids, the linear-SRA pooling matrices) stays symbolic: one ``.onnx`` file serves any batch and any input of
at least 32 px.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write
from ..errors import PVTError
from .spec import ExportSpec, export_spec

DEFAULT_OPSET = 20  # 20 has a Gelu operator (onnxruntime >= 1.17); 18 spells it with Erf, Mul, Div, Add
CHECK_SIZES: tuple[tuple[int, int], ...] = ((224, 224), (200, 328))
_ORT_SPIN = True


@contextlib.contextmanager
def ort_spinning(enabled: bool) -> Iterator[None]:
    """Whether sessions made inside the block let onnxruntime's threads spin after a run (its default).

    Spinning lowers onnxruntime's own latency a little, but the spinning threads hold the cores for a while after each
    run, so whatever runs next on them waits: measured on B0 at batch 1 (2 threads), an eager PyTorch call right after
    an onnxruntime call took 16.8 ms instead of 8.5. ``pvtv2 bench`` turns it off so that interleaved paths do not
    slow each other down.
    """
    global _ORT_SPIN
    before, _ORT_SPIN = _ORT_SPIN, enabled
    try:
        yield
    finally:
        _ORT_SPIN = before


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise PVTError(
            "onnxruntime is not installed; install it with: pip install 'pvtv2[deploy]' (onnx, onnxscript, onnxruntime)"
        ) from None
    return onnxruntime


def _require_onnx_exporter() -> None:
    for mod in ("onnx", "onnxscript"):
        try:
            __import__(mod)
        except ImportError:
            raise PVTError(f"ONNX export needs {mod}; install it with: pip install 'pvtv2[deploy]'") from None


def onnx_bytes(
    model: nn.Module,
    *,
    backbone: bool | None = None,
    input_size: tuple[int, int] = (224, 224),
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
) -> bytes:
    """Serialised ONNX model of ``model`` with dynamic batch, height and width.

    Args:
        model: a PVT (or any module with an ``export_spec`` hook); exported in eval mode, on its own device.
        backbone: export the four stage maps instead of the logits (default: True for headless models).
        input_size: ``(H, W)`` of the example input that is traced (any size works afterwards).
        opset: ONNX opset version.
        precision: ``"fp32"``, or ``"fp16"``: weights and arithmetic in float16 (LayerNorm statistics, the pooled
            mean and the head in float32), float32 images in and outputs out. bf16 is chosen when the file is run
            (OpenVINO's inference-precision hint, TensorRT's ``--bf16``): ONNX Runtime has no CPU kernels for it.
    """
    _require_onnx_exporter()
    spec = _in_precision(export_spec(model, backbone=backbone), precision)
    if min(input_size) < spec.min_size:
        raise PVTError(f"--input-size {input_size} is below the model's minimum of {spec.min_size} px")
    was_training = model.training
    spec.module.eval()  # a wrapper (StageMaps) and the model inside it
    try:
        return _trace(spec, input_size, opset)
    finally:
        model.train(was_training)


def _in_precision(spec: ExportSpec, precision: str) -> ExportSpec:
    """``spec`` whose module computes in ``precision`` (a converted copy; the model is left as it is)."""
    from ..precision import Converted, check, to_reduced

    if check(precision) == "fp32":
        return spec
    if precision == "bf16":
        raise PVTError("ONNX files are exported in fp32 or fp16; bf16 is a run-time choice (OpenVINO's "
                       "INFERENCE_PRECISION_HINT=bf16, TensorRT --bf16) on the fp32 file")
    half = Converted(to_reduced(spec.module, torch.float16, pack=False, norms_fp32=False), torch.float16)
    return dataclasses.replace(spec, module=half.eval())


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Raise these loggers to WARNING inside the block."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def spec_to_onnx(spec: ExportSpec, input_size: tuple[int, int], opset: int = DEFAULT_OPSET, dynamic: bool = True) -> bytes:
    """Trace ``spec.module`` (already in eval mode) to serialised ONNX; ``dynamic``: symbolic batch, height, width."""
    return _trace(spec, input_size, opset, dynamic)


def _require_exporter() -> None:
    """One line instead of an AttributeError deep inside torch when this torch's exporter is too old."""
    from torch.export import Dim

    if not hasattr(Dim, "DYNAMIC"):
        raise PVTError(f"ONNX export needs a newer torch: torch {torch.__version__} lacks torch.export.Dim.DYNAMIC, which "
                       "the dynamo ONNX exporter's dynamic shapes use (torch 2.14 is tested); upgrade torch to export")


def _trace(spec: ExportSpec, input_size: tuple[int, int], opset: int, dynamic: bool = True) -> bytes:
    from torch.export import Dim

    _require_exporter()
    device = next(spec.module.parameters()).device
    # batch 2: torch.export specialises sizes 0 and 1, so a batch-1 example would freeze the batch dimension
    x = torch.randn(2, spec.in_chans, *input_size, device=device)
    dims = {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC} if dynamic else {0: Dim.DYNAMIC}
    log = io.StringIO()
    # the exporter prints progress on stdout and its graph passes log every rewrite at INFO: keep them quiet
    with contextlib.redirect_stdout(log), _quiet("onnxscript", "onnx_ir", "torch.onnx"), torch.no_grad():
        program = torch.onnx.export(
            spec.module,
            (x,),
            dynamo=True,
            opset_version=opset,
            dynamic_shapes=(dims,),
            input_names=[spec.input_name],
            output_names=list(spec.output_names),
            verbose=False,
        )
    proto = program.model_proto
    # readable names for the dynamic dimensions (the exporter calls them s0, s53, ...)
    names = ("batch", None, "height", "width")
    for dim, name in zip(proto.graph.input[0].type.tensor_type.shape.dim, names):
        if name and dim.dim_param:
            dim.dim_param = name
    return proto.SerializeToString()


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    backbone: bool | None = None,
    input_size: tuple[int, int] = (224, 224),
    opset: int = DEFAULT_OPSET,
    precision: str = "fp32",
) -> Path:
    """Write ``model`` as an ONNX file (atomically) and return its path; see :func:`onnx_bytes` for the Args."""
    data = onnx_bytes(model, backbone=backbone, input_size=input_size, opset=opset, precision=precision)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def onnx_session(
    source: str | os.PathLike[str] | bytes, *, device: str | torch.device | None = None, threads: int | None = None
) -> Any:
    """An ``onnxruntime.InferenceSession`` on a file or serialised model, with all graph optimisations on.

    Args:
        source: path of an ``.onnx`` file or its bytes.
        device: ``"cuda"`` uses the CUDA execution provider when onnxruntime has it; otherwise the CPU.
        threads: intra-op threads (default: ``torch.get_num_threads()``).
    """
    ort = _require_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.log_severity_level = 3  # errors only
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if _ORT_SPIN else "0")
    providers = ["CPUExecutionProvider"]
    if device is not None and torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise PVTError("onnxruntime has no CUDA provider here; pip install onnxruntime-gpu, or use --device cpu")
        providers.insert(0, "CUDAExecutionProvider")
    data = source if isinstance(source, bytes) else os.fspath(source)
    if not isinstance(data, bytes) and not Path(data).is_file():
        raise PVTError(f"no ONNX file at {data}")
    return ort.InferenceSession(data, sess_options=opts, providers=providers)


@dataclass
class OnnxCheck:
    """Result of :func:`check_onnx`: max abs difference to PyTorch per input size, over every output."""

    per_size: dict[tuple[int, int], float] = field(default_factory=dict)

    @property
    def max_abs_diff(self) -> float:
        return max(self.per_size.values())

    def __str__(self) -> str:
        parts = ", ".join(f"{h}x{w}: {d:.2e}" for (h, w), d in self.per_size.items())
        return f"onnxruntime vs PyTorch, max abs difference {self.max_abs_diff:.2e} ({parts})"


def check_onnx(
    source: str | os.PathLike[str] | bytes | Any,
    model: nn.Module,
    *,
    backbone: bool | None = None,
    sizes: tuple[tuple[int, int], ...] = CHECK_SIZES,
    batch: int = 2,
    seed: int = 0,
) -> OnnxCheck:
    """Run the ONNX model in onnxruntime and ``model`` in PyTorch on the same random inputs.

    Args:
        source: ``.onnx`` path, its bytes, or an ``InferenceSession``.
        model: the PyTorch model it was exported from.
        backbone: as given to the export.
        sizes: input ``(H, W)`` sizes to compare at.
        batch: images per input.
        seed: seed of the random inputs.
    """
    session = source if hasattr(source, "run") else onnx_session(source)
    spec = export_spec(model, backbone=backbone)
    gen = torch.Generator().manual_seed(seed)
    report = OnnxCheck()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for h, w in sizes:
            x = torch.randn(batch, spec.in_chans, h, w, generator=gen)
            with torch.no_grad():
                ref = spec.module(x.to(device))
            ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
            out = session.run(None, {spec.input_name: x.numpy()})
            report.per_size[(h, w)] = max(
                (torch.from_numpy(o) - r.float().cpu()).abs().max().item() for o, r in zip(out, ref)
            )
    finally:
        model.train(was_training)
    return report
