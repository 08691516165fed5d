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
import warnings
from collections import OrderedDict
from typing import Any, Union

import torch
from torch import nn

from ..errors import PVTError

INSTALL = "pip install 'pvtv2[openvino]'"
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
        precision: ``"fp32"`` or ``"bf16"``, given to OpenVINO as its inference-precision hint (``f32`` is explicit:
            OpenVINO's CPU plugin would pick bf16 by itself on a CPU with native bf16). ``precision`` then reads what
            the compiled model chose (OpenVINO 2026 honours an explicit bf16 hint also on CPUs without native bf16,
            by emulation; :func:`pvtv2.runtime.prepare` asks for it only where it is native).
        threads: inference threads (default: ``torch.get_num_threads()``).
        example_input: a batch to trace with (default: 2 random 224x224 images; the first call's batch when
            ``per_shape``).
        per_shape: trace once per input shape instead of once with dynamic sizes.
        cache_size: compiled shapes kept (least recently used dropped first).
        hint: OpenVINO's ``PERFORMANCE_HINT``, with one stream holding every thread. ``"LATENCY"`` for every batch:
            ``"THROUGHPUT"`` (also with one stream) measured no different at batch 16 (PVT v2-B0, 2 threads: 617 vs
            539 ms, then 593 vs 627 ms, on a shared machine); its default several streams would each get a share of
            the threads, which one synchronous call leaves idle.
    """

    def __init__(self, module: nn.Module, precision: str = "fp32", threads: int | None = None, *,
                 example_input: torch.Tensor | None = None, per_shape: bool = False, cache_size: int = 8,
                 hint: str = "LATENCY") -> None:
        if precision not in ("fp32", "bf16"):
            raise PVTError(f"OpenVINO runs fp32 or bf16, not {precision!r}")
        self.core = shared_core()  # also says in one line when OpenVINO is missing
        self.config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
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
                self.model = None

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
