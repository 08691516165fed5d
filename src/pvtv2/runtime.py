"""Inference backends: one call turns a model into a fast ``images -> output`` function.

>>> run = pvtv2.runtime.prepare(model, "onnxruntime")     # or "torch", "compile", "openvino"
>>> logits = run(images)                                   # (B, 3, H, W) float -> (B, num_classes)
>>> run = pvtv2.runtime.fastest(model, device="cpu")       # the best backend for that device
>>> run = pvtv2.runtime.prepare(model, "torch", precision="bf16")  # where the CPU/GPU has native bf16

Every backend returns what eager PyTorch returns, within float rounding (1e-4 max abs on logits, checked by the
tests and ``pvtv2 bench``): logits for a classifier, the list of four NCHW stage maps for a headless backbone.
In bf16/fp16 (:mod:`pvtv2.precision`) the outputs are still float32 tensors, within the reduced type's rounding.
``"openvino"`` (``pip install 'pvtv2[openvino]'``) runs fp32, or bf16 by OpenVINO's inference-precision hint where
the CPU has native bf16, or int8 after NNCF's post-training quantization on calibration images (opt-in: it changes
the numbers more than bf16, see docs/speed.md).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Union

import torch
from torch import nn

from .errors import PVTError
from .export.spec import export_spec, is_backbone
from .precision import DTYPES, Autocast, Converted, autocast_module, check, native, resolve, to_reduced

Output = Union[torch.Tensor, list[torch.Tensor]]
BACKENDS = ("torch", "compile", "onnxruntime", "openvino")
log = logging.getLogger(__name__)


class Runner:
    """A prepared model: ``runner(images)`` runs it without autograd on the right device.

    Attributes:
        backend: the backend's name.
        device: where the inputs are sent.
        module: the PyTorch module the backend was built from.
        precision: what it computes in (``"fp32"``, ``"bf16"``, ``"fp16"``): the one asked for, or fp32 where the
            device has no native support for it.
    """

    def __init__(self, backend: str, fn: Callable[[torch.Tensor], Any], device: torch.device, module: nn.Module,
                 precision: str = "fp32"):
        self.backend, self.device, self.module, self._fn = backend, device, module, fn
        self.precision = precision

    def __call__(self, images: torch.Tensor) -> Output:
        with torch.inference_mode():
            out = self._fn(images.to(self.device, torch.float32))
        return out if isinstance(out, torch.Tensor) else list(out)

    def __repr__(self) -> str:
        return (f"Runner(backend={self.backend!r}, device={str(self.device)!r}, precision={self.precision!r}, "
                f"module={type(self.module).__name__})")


class RunnerModule(nn.Module):
    """A :class:`Runner` that still reads as its model: ``forward`` runs the backend, every other attribute
    (``num_classes``, ``out_channels``, ``parameters()`` and so the device, ...) is the model's. For task code
    written against the PyTorch module (Semantic FPN's sliding windows, a detector's backbone and FPN); made by
    :func:`as_module`.

    Args:
        runner: the prepared model.
        model: the PyTorch module it stands for.
        keys: the model returns a dict of tensors: the runner's outputs are its values in this order.
    """

    def __init__(self, runner: Runner, model: nn.Module, keys: list[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.runner = runner
        self.keys = keys
        self.precision = runner.precision

    def forward(self, x: torch.Tensor) -> Any:
        out = self.runner(x)
        if self.keys is None:
            return out
        return OrderedDict(zip(self.keys, [out] if isinstance(out, torch.Tensor) else out, strict=True))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)


class _DictValues(nn.Module):
    """A dict-returning module as one returning the tuple of its values (what the backends trace)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.module(x).values())


def as_module(model: nn.Module, backend: str, *, precision: str = "fp32", example_input: torch.Tensor | None = None,
              device: str | torch.device | None = None) -> nn.Module:
    """``model`` run by ``backend`` behind the model's own interface, for task code written against the module.

    ``"torch"``: eager, under autocast in ``precision`` where the device has it natively
    (:func:`pvtv2.precision.autocast_module`; the model itself for fp32). Any other backend: :func:`prepare` in a
    :class:`RunnerModule`; ``model`` maps an image batch to a tensor, a tuple of tensors or a dict of tensors (a
    detector's backbone and FPN: traced as the tuple of its values, given back as the same dict).

    >>> seg = as_module(segmentor, "openvino")                              # images -> logits
    >>> detector.backbone = as_module(detector.backbone, "openvino")        # images -> {"0": P2, ..., "pool": P6}
    """
    model = model.eval()
    if backend == "torch":
        return autocast_module(model, precision, _device_of(model, device))
    probe = example_input if example_input is not None else torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        out = model(probe.to(_device_of(model, device)))
    keys = list(out) if isinstance(out, dict) else None
    target = _DictValues(model) if keys is not None else model
    runner = prepare(target, backend, precision=precision, example_input=example_input, device=device,
                     backbone=False)
    return RunnerModule(runner, model, keys)  # type: ignore[arg-type]


def _device_of(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def prepare(
    model: nn.Module,
    backend: str = "torch",
    *,
    precision: str = "fp32",
    example_input: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    backbone: bool | None = None,
    calibration: Iterable[torch.Tensor] | None = None,
) -> Callable[[torch.Tensor], Output]:
    """A callable mapping an NCHW float batch to the model's output with the chosen backend and precision.

    Args:
        model: a PVT classifier or backbone (any module with an ``export_spec`` hook for ``onnxruntime``).
            Put in eval mode and moved to ``device``.
        backend: ``"torch"`` (eager; on CPU the fused or plain kernels, whichever :mod:`pvtv2.kernel_choice`
            measured faster on this machine for the input's shape), ``"compile"`` (``torch.compile``; inductor
            with weight freezing on CPU) or ``"onnxruntime"`` (exported to ONNX in memory; CUDA provider on CUDA)
            or ``"openvino"`` (CPU only; converted by OpenVINO's PyTorch front end with dynamic batch, height and
            width, compiled once per input shape: :class:`pvtv2.export.openvino.OpenVINORunner`).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` for ``torch`` and ``compile``, ``"fp32"``, ``"bf16"`` or
            ``"int8"`` (with ``calibration``) for ``openvino`` (bf16: OpenVINO's ``INFERENCE_PRECISION_HINT``, the
            model's weights stay fp32); where the device has no native support for bf16/fp16, fp32 with one logged
            line (:func:`pvtv2.precision.resolve`).
            CPU (torch, compile): a copy of the model converted once (:func:`pvtv2.precision.to_reduced`: the fused
            kernels in bf16 with pre-packed weights, LayerNorm statistics, softmax, pooled mean and head in fp32);
            CUDA: ``torch.autocast``.
            Outputs are float32 either way.
        example_input: a batch like the ones to come; ``compile`` is warmed up on it (so the first real call is
            not the slow one), ``torch`` on CPU chooses its kernels for its shape, ``onnxruntime`` traces at its
            size, ``openvino`` traces at its height and width and compiles for its shape. Default: 2 random images
            of 224x224.
        device: ``"cpu"``, ``"cuda"``, ... (default: where the model's parameters are).
        backbone: return the four stage maps instead of the logits (default: True for a headless model).
        calibration: ``precision="int8"`` (``openvino`` only): batches of images like the ones to come, never the
            ones scored; NNCF's post-training quantization takes each quantized tensor's range from them
            (:func:`pvtv2.export.openvino.quantize_int8`; ``pip install 'pvtv2[int8]'``).
    """
    if backend not in BACKENDS:
        raise PVTError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if precision == "int8" and backend != "openvino":
        raise PVTError(f"int8 runs in the openvino backend (NNCF post-training quantization), not {backend}; "
                       "use backend openvino")
    if calibration is not None and precision != "int8":
        raise PVTError(f"calibration images are for precision int8, not {precision}")
    if backend == "onnxruntime" and check(precision) != "fp32":
        raise PVTError(f"the onnxruntime backend runs fp32 models; for {precision} use backend torch or compile")
    if backend == "openvino" and precision == "fp16":
        raise PVTError("the openvino backend runs fp32 or bf16 (or int8 with calibration images); for fp16 use "
                       "backend torch or compile")
    dev = _device_of(model, device)
    if backend == "openvino":
        if dev.type != "cpu":
            raise PVTError(f"the openvino backend runs on the CPU, not {dev.type}; use --device cpu")
        from .export.openvino import require_openvino

        require_openvino()  # one line before anything is converted
    model = model.to(dev).eval()
    backbone = is_backbone(model) if backbone is None else backbone
    module = export_spec(model, backbone=backbone).module.eval()  # the model, or a StageMaps wrapper
    precision = precision if precision == "int8" else resolve(precision, dev)
    if backend == "openvino":  # fp32 weights; bf16 is OpenVINO's compile-time choice, int8 NNCF's quantization
        return _openvino(module, dev, example_input, model, precision, backbone, calibration)
    module = _in_precision(module, precision, dev)
    if backend == "torch":
        return _eager(module, dev, example_input, model, precision)
    if backend == "compile":
        return _compiled(module, dev, example_input, model, precision)
    return _onnxruntime(model, dev, example_input, backbone)


def _in_precision(module: nn.Module, precision: str, dev: torch.device) -> nn.Module:
    """``module`` computing in ``precision``: a converted copy on CPU, autocast elsewhere (float32 in and out)."""
    if precision == "fp32":
        return module
    dtype = DTYPES[precision]
    if dev.type == "cpu":
        return Converted(to_reduced(module, dtype), dtype)
    return Autocast(module, dev.type, dtype)


def _eager(module: nn.Module, dev: torch.device, example: torch.Tensor | None, model: nn.Module,
           precision: str) -> Runner:
    """Eager PyTorch; on CPU with the kernels measured fastest for each input shape (:mod:`pvtv2.kernel_choice`)."""
    if dev.type != "cpu":
        return Runner("torch", module, dev, model, precision)
    from .kernel_choice import MeasuredKernels

    runner = Runner("torch", MeasuredKernels(module), dev, model, precision)
    if example is not None:
        runner(example)  # measure (or read the machine's earlier measurement) now, not on the first batch
    return runner


def _compiled(module: nn.Module, dev: torch.device, example: torch.Tensor | None, model: nn.Module,
              precision: str = "fp32") -> Runner:
    options = {"freezing": True} if dev.type == "cpu" else None  # fold weights as constants (inference only)
    # static shapes give the best kernels; a new input shape compiles once more (up to torch's recompile limit)
    compiled = torch.compile(module, dynamic=False, options=options)
    runner = Runner("compile", compiled, dev, model, precision)
    t = time.perf_counter()
    runner(example if example is not None else torch.randn(2, 3, 224, 224))  # compile now, not on the first batch
    log.debug("torch.compile warm-up took %.1f s", time.perf_counter() - t)
    return runner


def _onnxruntime(model: nn.Module, dev: torch.device, example: torch.Tensor | None, backbone: bool) -> Runner:
    from .export.onnx import onnx_bytes, onnx_session

    size = tuple(example.shape[-2:]) if example is not None else (224, 224)
    session = onnx_session(onnx_bytes(model, backbone=backbone, input_size=size), device=dev)  # type: ignore[arg-type]
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> Output:
        outs = [torch.from_numpy(o).to(dev) for o in session.run(None, {name: x.detach().cpu().numpy()})]
        return outs[0] if len(outs) == 1 and not backbone else outs

    return Runner("onnxruntime", run, dev, model)


def _openvino(module: nn.Module, dev: torch.device, example: torch.Tensor | None, model: nn.Module, precision: str,
              backbone: bool, calibration: Iterable[torch.Tensor] | None = None) -> Runner:
    from .export.openvino import OpenVINORunner, with_token_layer_norms

    # traced at batch 2 (a batch of 1 may be traced as a special case), at the example's height and width
    trace = torch.randn(2, 3, *example.shape[-2:]) if example is not None else None
    # LayerNorms on (B, N, C) tokens: OpenVINO keeps them as one MVN kernel each (see TokenLayerNorm)
    ov_runner = OpenVINORunner(with_token_layer_norms(module), precision, example_input=trace, calibration=calibration)

    def run(x: torch.Tensor) -> Output:
        outs = ov_runner.outputs(x)
        return outs[0] if len(outs) == 1 and not backbone else outs

    runner = Runner("openvino", run, dev, model, precision)
    runner.openvino = ov_runner  # type: ignore[attr-defined]  # its converted model and compile settings
    if example is not None:
        run(example)  # compile for the example's shape now, not on the first batch
        runner.precision = ov_runner.precision  # what the compiled model chose
    return runner


def _glibc() -> Any:
    """The C library when it is glibc (``mallopt``/``malloc_trim`` exist), else None."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune_cpu_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = 2**31 - 1) -> bool:
    """Let glibc keep and reuse freed memory for large tensors (process-wide; Linux/glibc only).

    By default glibc hands every allocation above 32 MiB straight to the kernel (``mmap``) and back (``munmap``),
    so each large activation costs page faults that zero it first: in a CPU training step of PVT v2-B0 at batch 32
    that is ~1.7 GB of faults and a third of the time. Raising the thresholds makes the heap recycle that memory
    (what jemalloc/tcmalloc, the usual advice for PyTorch on CPU, also do). The process then keeps its peak
    memory instead of returning it between steps. Returns False where it cannot be applied.

    Args:
        mmap_threshold: allocations below this come from the heap (``M_MMAP_THRESHOLD``).
        trim_threshold: free memory the heap keeps before returning any (``M_TRIM_THRESHOLD``).
    """
    libc = _glibc()
    if libc is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, mmap_threshold)) and bool(libc.mallopt(m_trim_threshold, trim_threshold))


def release_free_memory() -> None:
    """Hand the heap's free pages back to the kernel (glibc ``malloc_trim``); a no-op elsewhere."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _measured_best(dev: torch.device, batch: int | None) -> tuple[str, ...]:
    """The backends ``pvtv2 bench`` found fastest (docs/speed.md), best first; ``fastest(measure=True)`` re-measures.

    CPU: OpenVINO (our graph in OpenVINO, 2026-12-03: faster than every PyTorch and onnxruntime path at batch 1 and
    16); without it, onnxruntime for single images (0.93-1.19x eager, steadier on a busy machine) and eager with the
    fused kernels for batches (1.3-1.4x onnxruntime). CUDA: torch.compile.
    """
    if dev.type == "cuda":
        return ("compile",)
    if dev.type == "cpu":
        return ("openvino", "onnxruntime", "torch") if batch == 1 else ("openvino", "torch")
    return ("torch",)


def _reduced_choice(dev: torch.device) -> str | None:
    """The reduced precision worth running on ``dev``: bf16 where native (CUDA: else fp16), or None."""
    for name in ("bf16", "fp16") if dev.type == "cuda" else ("bf16",):
        if native(name, dev):
            return name
    return None


def _available(backend: str, dev: torch.device) -> bool:
    if backend == "openvino":
        import importlib.util

        return dev.type == "cpu" and importlib.util.find_spec("openvino") is not None
    if backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return dev.type == "cpu" or "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return True


def fastest(
    model: nn.Module,
    device: str | torch.device | None = None,
    *,
    example_input: torch.Tensor | None = None,
    measure: bool = False,
    repeats: int = 5,
    backbone: bool | None = None,
    allow_reduced: bool = False,
) -> Callable[[torch.Tensor], Output]:
    """The fastest way to run ``model`` on ``device``.

    Args:
        model: a PVT classifier or backbone.
        device: target device (default: where the model is).
        example_input: a typical batch (also what ``measure`` times).
        measure: time every available backend on ``example_input`` and keep the fastest, instead of the choice
            that ``pvtv2 bench`` measured (CPU: OpenVINO where installed, else onnxruntime for batch 1 and eager
            with the fused kernels for batches; CUDA: torch.compile).
        repeats: timed runs per backend when measuring (median).
        backbone: return the four stage maps instead of the logits.
        allow_reduced: also consider bf16 (CUDA: bf16 or fp16) where the device has it natively. Off by default:
            it changes the numbers (logits within ~1e-2 instead of 1e-5 of fp32).
    """
    dev = _device_of(model, device)
    reduced = _reduced_choice(dev) if allow_reduced else None
    if not measure:
        if reduced is not None:  # OpenVINO's bf16 (else the converted model) on CPU; compiled on CUDA
            choice = "compile" if dev.type == "cuda" else "openvino" if _available("openvino", dev) else "torch"
            return prepare(model, choice, precision=reduced, example_input=example_input, device=dev,
                           backbone=backbone)
        ranked = _measured_best(dev, None if example_input is None else example_input.shape[0])
        choice = next((b for b in ranked if _available(b, dev)), "torch")
        return prepare(model, choice, example_input=example_input, device=dev, backbone=backbone)
    x = example_input if example_input is not None else torch.randn(2, 3, 224, 224)
    candidates = [(name, "fp32") for name in BACKENDS if _available(name, dev)]
    if reduced is not None:
        candidates += [(name, reduced) for name in ("torch", "compile", "openvino") if _available(name, dev)
                       and (name != "openvino" or reduced == "bf16")]
    best: tuple[float, Callable[[torch.Tensor], Output]] | None = None
    for name, precision in candidates:
        runner = prepare(model, name, precision=precision, example_input=x, device=dev, backbone=backbone)
        runner(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            runner(x)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - t)
        median = sorted(times)[len(times) // 2]
        log.info("backend %s %s: %.2f ms per batch", name, precision, median * 1e3)
        if best is None or median < best[0]:
            best = (median, runner)
    assert best is not None
    return best[1]
