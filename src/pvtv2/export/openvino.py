"""OpenVINO on the CPU: a PyTorch model converted by OpenVINO's own converter, compiled once per input shape.

One implementation for :func:`pvtv2.runtime.prepare` (``backend="openvino"``, our model) and for ``pvtv2 bench``'s
OpenVINO peer paths (timm's model), so that the two are converted, compiled and called the same way.

>>> run = OpenVINORunner(model, "bf16")        # images -> logits (or the list of outputs of a multi-output model)
>>> logits = run(torch.randn(1, 3, 224, 224))   # converts/compiles for (1, 3, 224, 224) on first use

Why the PyTorch front end (``ov.convert_model(module)``) and not our ONNX bytes (``pvtv2.export.onnx_bytes``):
measured on an AMD EPYC with avx512_bf16, 2 threads, PVT v2-B0 and B2, batch 1 and 16, fp32 and bf16, the two
compiled models run at the same speed within the machine's noise (+-10%): OpenVINO fuses both graphs into the same
kernels. The PyTorch front end converts 3x faster (B0: 9 s against 28 s through the dynamo ONNX exporter) and needs
neither onnx nor onnxscript, so it is the one kept.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Union

import torch
from torch import nn

from ..errors import PVTError
from ..precision import native

INSTALL = "pip install 'pvtv2[openvino]'"
INSTALL_INT8 = "pip install 'pvtv2[int8]'"
Output = Union[torch.Tensor, list[torch.Tensor]]


def require_openvino() -> Any:
    """The ``openvino`` module, or a one-line :class:`PVTError` saying how to install it."""
    try:
        return importlib.import_module("openvino")
    except ImportError as e:
        raise PVTError(f"the openvino backend needs OpenVINO ({e}); install it with: {INSTALL}") from None


class TokenLayerNorm(nn.LayerNorm):
    """A LayerNorm that normalises a ``(B, H, W, C)`` map as ``(B, H*W, C)`` tokens (same numbers, same parameters).

    OpenVINO's CPU plugin keeps a LayerNorm over the last axis of a 3-D tensor as one MVN kernel, but decomposes one
    over the last axis of a 4-D tensor (our blocks' channels-last maps) into a mean Reduce, a subtraction, an RMS
    kernel and reorders: on PVT v2-B2, 40 of 53 LayerNorms (timm's tokens are 3-D: 49 MVN). With this class all 53
    are MVN; measured against the plain model in OpenVINO (B2, 2 threads, interleaved, loaded machine): batch 16
    3-6% faster (fp32 2061 vs 2128 ms, bf16 985 vs 1045 ms), batch 1 level (within the noise).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() <= 3:
            return super().forward(x)
        return super().forward(x.reshape(x.shape[0], -1, x.shape[-1])).reshape(x.shape)


def with_token_layer_norms(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (parameters shared) whose LayerNorms are :class:`TokenLayerNorm` (for tracing only)."""
    import copy

    memo = {id(p): p for p in module.parameters()} | {id(b): b for b in module.buffers()}
    out = copy.deepcopy(module, memo)  # modules copied, tensors shared
    for m in out.modules():
        if type(m) is nn.LayerNorm:
            m.__class__ = TokenLayerNorm
    return out


def require_nncf() -> Any:
    """The ``nncf`` module (OpenVINO's post-training quantization), or a one-line :class:`PVTError`."""
    try:
        return importlib.import_module("nncf")
    except ImportError as e:
        raise PVTError(f"int8 needs NNCF ({e}); install it with: {INSTALL_INT8}") from None


def quantize_int8(model: Any, calibration: Iterable[torch.Tensor], subset_size: int = 300) -> Any:
    """``model`` (an ``ov.Model``) with int8 weights and activations by NNCF's post-training quantization.

    Args:
        model: the converted float model (dynamic or static shapes).
        calibration: input batches ``(B, 3, H, W)`` like the ones to come, never the images that are scored (NNCF
            records each quantized tensor's range on them). A few hundred images are enough.
        subset_size: calibration images NNCF uses at most.

    NNCF's ``MIXED`` preset (symmetric weights, asymmetric activations) and its default model type, with the
    depth-wise convolutions (``GroupConvolution``) left in float: quantized, their input quantizer is per channel on
    axis 1 of our channels-last ``(B, H, W, C)`` maps, which ties the model to the calibration's height (any other
    size fails to reshape), and they are memory-bound anyway: leaving them out made int8 faster (measured 2026-12-04,
    AMD EPYC with avx512_bf16/vnni, 2 threads: B2 batch 16 1.69x fp32 against 1.67x with them, B0 batch 1 1.52x
    against 1.23x). ``model_type=TRANSFORMER`` (which also smooths activations) ran B0 no faster than fp32. On the
    Fashion-MNIST B0 (600 training images to calibrate): test top-1 91.29% fp32, 91.16% int8. The speed table:
    docs/speed.md.
    """
    nncf = require_nncf()
    images = []  # one image per item: NNCF's statistics are per item
    for batch in calibration:
        if not isinstance(batch, torch.Tensor) or batch.dim() != 4:
            raise PVTError(f"int8 calibration takes (B, 3, H, W) image batches, got {type(batch).__name__} "
                           f"{tuple(getattr(batch, 'shape', ()))}")
        images += [x[None].numpy() for x in batch.detach().to("cpu", torch.float32)]
        if len(images) >= subset_size:
            break
    if not images:
        raise PVTError("int8 needs calibration images: pass a few hundred images like the ones to come (not the "
                       "ones you score)")
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)  # not its INFO line per node left in float
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return nncf.quantize(model, nncf.Dataset(images[:subset_size]), preset=nncf.QuantizationPreset.MIXED,
                                 subset_size=min(subset_size, len(images)),
                                 ignored_scope=nncf.IgnoredScope(types=["GroupConvolution"], validate=False))
    finally:
        nncf_log.setLevel(level)


def _type_name(t: Any) -> str:
    return getattr(t, "get_type_name", lambda: str(t))()


_CORE: Any = None


def shared_core() -> Any:
    """The process's one ``openvino.Core``. Creating a second Core in a process and using it can crash the process
    with a segmentation fault later (openvinotoolkit/openvino#35338; Ultralytics fixed its test runs, which died after
    about 20 OpenVINO loads, by reusing one Core: ultralytics/ultralytics#25864), so every runner compiles on this one.
    Settings are passed per compiled model, never set on the Core."""
    global _CORE
    ov = require_openvino()  # one line when OpenVINO is missing (or hidden), also after a Core was made
    if _CORE is None:
        _CORE = ov.Core()
    return _CORE


class OpenVINORunner:
    """A module converted to OpenVINO (its PyTorch front end) and compiled for the CPU, once per input shape.

    The module is converted once with a dynamic batch, height and width (``per_shape=False``), then reshaped to each
    new input shape and compiled for it: a static shape compiles to OpenVINO's best kernels, and a reshape costs far
    less than a new conversion. ``per_shape=True`` traces the module again for each shape instead (for code that does
    not trace with symbolic sizes; a failed dynamic conversion falls back to it too).

    Args:
        module: the PyTorch model (``images -> tensor`` or a tuple of tensors), traced in eval mode with the fused
            CPU kernels off (:func:`pvtv2.layers.fused.fused_kernels`), so that the graph holds plain ATen ops.
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"``. fp32 and bf16 are given to OpenVINO as its
            inference-precision hint (``f32`` is explicit:
            OpenVINO's CPU plugin would pick bf16 by itself on a CPU with native bf16). ``precision`` then reads what
            the compiled model chose (OpenVINO 2026 honours an explicit bf16 hint also on CPUs without native bf16,
            by emulation; :func:`pvtv2.runtime.prepare` asks for it only where it is native). int8 quantizes the
            converted model once with NNCF (:func:`quantize_int8`, on ``calibration``); the rest runs in bf16 where
            the CPU has native bf16, else f32.
        threads: inference threads (default: ``torch.get_num_threads()``).
        example_input: a batch to trace with (default: 2 random 224x224 images; the first call's batch when
            ``per_shape``).
        per_shape: trace once per input shape instead of once with dynamic sizes.
        cache_size: compiled shapes kept (least recently used dropped first).
        hint: OpenVINO's ``PERFORMANCE_HINT``, with one stream holding every thread. ``"LATENCY"`` for every batch:
            ``"THROUGHPUT"`` (also with one stream) measured no different at batch 16 (PVT v2-B0, 2 threads: 617 vs
            539 ms, then 593 vs 627 ms, on a shared machine); its default several streams would each get a share of
            the threads, which one synchronous call leaves idle.
        calibration: int8 only: input batches to calibrate on (see :func:`quantize_int8`).
    """

    def __init__(self, module: nn.Module, precision: str = "fp32", threads: int | None = None, *,
                 example_input: torch.Tensor | None = None, per_shape: bool = False, cache_size: int = 8,
                 hint: str = "LATENCY", calibration: Iterable[torch.Tensor] | None = None) -> None:
        if precision not in ("fp32", "bf16", "int8"):
            raise PVTError(f"OpenVINO runs fp32, bf16 or int8, not {precision!r}")
        if precision == "int8":
            if per_shape:
                raise PVTError("int8 is calibrated once on the model converted with dynamic sizes, not per shape")
            if calibration is None:
                raise PVTError("int8 needs calibration images: pass calibration=[batches of (B, 3, H, W) images]")
            require_nncf()  # one line before anything is converted
        self.core = shared_core()  # also says in one line when OpenVINO is missing
        # int8: what is not quantized runs in bf16 where the CPU has it natively (measured 1.02-1.40x bf16 alone)
        rest = "bf16" if precision == "bf16" or (precision == "int8" and native("bf16", "cpu")) else "f32"
        self.config = {"INFERENCE_PRECISION_HINT": rest,
                       "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "NUM_STREAMS": 1,
                       "PERFORMANCE_HINT": hint}
        self.module = module.eval()
        self.precision = precision
        self.cache_size = cache_size
        self.requests: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self.model: Any = None  # the dynamic ov.Model (None: per shape)
        if not per_shape:
            try:
                x = example_input if example_input is not None else torch.randn(2, 3, 224, 224)
                self.model = self._convert(x, [-1, x.shape[1], -1, -1])
            except Exception:  # noqa: BLE001 - code that does not trace with symbolic sizes: trace per shape
                if precision == "int8":
                    raise PVTError("int8: this model does not convert with dynamic sizes, so it cannot be "
                                   "calibrated once; use fp32 or bf16") from None
                self.model = None
        if precision == "int8":
            assert calibration is not None
            self.model = quantize_int8(self.model, calibration)

    def _convert(self, x: torch.Tensor, shape: list[int]) -> Any:
        import openvino as ov

        from ..layers.fused import fused_kernels

        with torch.no_grad(), fused_kernels(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its front end still calls torch.jit.trace (FutureWarning, TracerWarning)
            return ov.convert_model(self.module, example_input=x.cpu(), input=[shape])

    def _request(self, x: torch.Tensor) -> Any:
        shape = tuple(x.shape)
        if shape in self.requests:
            self.requests.move_to_end(shape)
            return self.requests[shape]
        if self.model is not None:
            model = self.model.clone()
            model.reshape(list(shape))
        else:
            model = self._convert(x, list(shape))
        compiled = self.core.compile_model(model, "CPU", self.config)
        chosen = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: "bf16", "f32", ...
        if self.precision != "int8":  # int8: quantized matmuls and convolutions, the rest f32
            self.precision = "bf16" if _type_name(chosen) == "bf16" else "fp32"
        self.requests[shape] = compiled.create_infer_request()
        while len(self.requests) > self.cache_size:
            self.requests.popitem(last=False)
        return self.requests[shape]

    def outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every output of the model on ``x`` (CPU float32 tensors, copied out of OpenVINO's buffers)."""
        x = x.detach().to("cpu", torch.float32).contiguous()
        request = self._request(x)
        request.infer({0: x.numpy()})
        return [torch.from_numpy(t.data.copy()) for t in request.output_tensors]

    def __call__(self, x: torch.Tensor) -> Output:
        outs = self.outputs(x)
        return outs[0] if len(outs) == 1 else outs
