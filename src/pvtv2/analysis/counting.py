"""Per-operator counting rules in mmcv's convention, for ``torch.utils.flop_counter.FlopCounterMode``.

The paper's "GFLOPs" are multiply-accumulates counted the way mmcv's ``get_model_complexity_info`` counts them,
plus the attention matrix products added by hand (as the authors' released get_flops.py does). mmcv hooks modules; we count ATen operators
instead, so the rules see every model (torchvision detectors, timm ViTs, ours) and nothing depends on how a model
is written. Each rule below says which operators it covers and what mmcv counts for the matching module:

==============  ==========================================================  ==========================================
category        ATen operators                                              MACs counted (mmcv module hook)
==============  ==========================================================  ==========================================
conv            ``convolution``, ``_convolution``                           out.numel * Cin/groups * k*k, + out.numel
                                                                            for the bias (``ConvTranspose``: in.numel
                                                                            * Cout/groups * k*k, + out.numel)
linear          ``mm``, ``addmm``, ``bmm``, ``baddbmm`` with a parameter     in.numel * out_features (bias not counted)
                (or buffer) operand: ``nn.Linear`` in any layout
attention       the same products with two activation operands (``q @ k``,   B*heads*N*Nk*(d_qk + d_v); not counted by
                ``attn @ v``) and every ``_scaled_dot_product_*`` kernel    mmcv, added by hand in the paper; switch
                                                                            off with ``attn_matmul=False``
norm            ``native_layer_norm``, ``native_batch_norm`` and its        in.numel, x2 with an affine weight
                ``_legit`` / cuDNN / MIOpen forms, ``native_group_norm``
pool            max / avg / adaptive pooling, 1-3 d                         in.numel
activation      ``relu(_)``, ``leaky_relu(_)``, ``elu(_)``, ``hardtanh(_)`` in.numel (GELU, SiLU, softmax: 0, as mmcv)
                (ReLU6), ``_prelu_kernel``
upsample        ``upsample_*`` / ``_upsample_*`` (off by default)           out.numel
fused (CPU)     oneDNN ``mkldnn._linear_pointwise`` / ``_convolution_      as the linear / conv rule, plus out.numel
                pointwise`` (bias, activation, residual-add post-ops)       for a fused ReLU
==============  ==========================================================  ==========================================

Differences that follow from counting operators rather than modules, all tiny: mmcv counts ``nn.Upsample`` modules
but not ``F.interpolate`` (mmdet/mmseg necks and position-embedding resizing use the functional form), so
upsampling is off by default (``upsample=True`` counts every interpolation); ``nn.AdaptiveAvgPool2d(1)`` runs as
``mean`` and is not counted (mmcv: in.numel, 0.0001 GFLOPs for ResNet-50); functional ``F.relu`` / ``F.layer_norm``
calls are counted (mmcv sees modules only). Operators torch knows but no rule here covers (fp8 ``_scaled_mm``,
backend convolutions called directly, backward kernels, ``flex_attention``) fall back to torch's own formula
halved (FLOPs -> MACs). Everything else (element-wise arithmetic, GELU, softmax, ``mean``) counts 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.flop_counter import flop_registry as TORCH_FORMULAS

aten = torch.ops.aten

# Categories whose count a switch can turn off; the others are always counted.
CATEGORIES = ("conv", "linear", "attention", "norm", "pool", "activation", "upsample", "other")


def _packets(*names: str) -> list[Any]:
    """The ATen operator packets among ``names`` that this torch build has."""
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


CONV_OPS = _packets("convolution", "_convolution")
MATMUL_OPS = {aten.mm: 0, aten.bmm: 0, aten.addmm: 1, aten.baddbmm: 1}  # index of the first matrix operand
SDPA_OPS = _packets(  # query, key, value first, each (B, heads, N, d)
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
)
NORM_OPS = _packets(  # input first, affine weight second
    "native_layer_norm",
    "native_batch_norm",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional",
    "cudnn_batch_norm",
    "miopen_batch_norm",
    "native_group_norm",
)
POOL_OPS = _packets(
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
    "max_pool3d_with_indices", "mkldnn_max_pool2d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "_adaptive_avg_pool2d", "_adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
)  # fmt: skip
ACTIVATION_OPS = _packets(
    "relu", "relu_", "leaky_relu", "leaky_relu_", "elu", "elu_", "hardtanh", "hardtanh_", "_prelu_kernel"
)
# oneDNN's fused CPU inference kernels (matmul / convolution with bias, activation and residual-add post-ops), used
# by torch.compile on CPU and by hand-fused eager code
_MKLDNN = getattr(torch.ops, "mkldnn", None)
FUSED_LINEAR_OPS = [getattr(_MKLDNN, n) for n in ("_linear_pointwise",) if hasattr(_MKLDNN, n)]
FUSED_CONV_OPS = [getattr(_MKLDNN, n) for n in ("_convolution_pointwise",) if hasattr(_MKLDNN, n)]
UPSAMPLE_OPS = _packets(
    "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d",
    "_upsample_nearest_exact2d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
    "_upsample_bilinear2d_aa", "upsample_bicubic2d", "_upsample_bicubic2d_aa", "upsample_trilinear3d",
)  # fmt: skip


def _numel(t: torch.Tensor) -> int:
    return math.prod(t.shape)


def _fallback_category(op: Any) -> str:
    name = str(op)
    if "attention" in name:
        return "attention"
    if "conv" in name:
        return "conv"
    return "linear" if "mm" in name else "other"


class MMCVRules:
    """Counting rules for ``FlopCounterMode(custom_mapping=rules.mapping())``, in MACs.

    Every rule also adds its count to :attr:`by_category`, whether the category is switched on or not, so one pass
    gives the count with and without the attention products.

    Args:
        weights: the model's parameters and buffers as the counted run sees them: a matrix product with one of
            them (or a view of one) as an operand is a linear layer, a product of two activations is attention.
        attn_matmul: count the attention products (the paper's convention) or leave them out (mmcv's raw count).
        upsample: count interpolation (off, as mmcv ignores ``F.interpolate``).
    """

    def __init__(self, weights: Iterable[torch.Tensor], attn_matmul: bool = True, upsample: bool = False) -> None:
        self._weights = {StorageWeakRef(t.untyped_storage()) for t in weights}
        self.counted = {c: True for c in CATEGORIES} | {"attention": attn_matmul, "upsample": upsample}
        self.by_category: dict[str, int] = defaultdict(int)

    def mapping(self) -> dict[Any, Callable[..., int]]:
        """Operator -> rule, covering every operator torch's own registry counts (ours replace them).

        Keys are operator packets (what ``FlopCounterMode`` looks rules up by) and, for our rules, also each of
        their overloads: ``FlopCounterMode`` decomposes any operator whose overload is not a key, and some of ours
        have Python decompositions (nearest upsampling becomes indexing, ``native_batch_norm`` becomes its
        ``_legit`` form) that would otherwise slip past their rule.
        """
        ours: dict[Any, Callable[..., Any]] = {}
        ours.update({op: self._conv for op in CONV_OPS})
        ours.update({op: self._matmul(first) for op, first in MATMUL_OPS.items()})
        ours.update({op: self._sdpa for op in SDPA_OPS})
        ours.update({op: self._norm for op in NORM_OPS})
        ours.update({op: self._input_numel("pool") for op in POOL_OPS})
        ours.update({op: self._input_numel("activation") for op in ACTIVATION_OPS})
        ours.update({op: self._upsample for op in UPSAMPLE_OPS})
        ours.update({op: self._fused_linear for op in FUSED_LINEAR_OPS})
        ours.update({op: self._fused_conv for op in FUSED_CONV_OPS})
        table = {op: self._halved(fn, _fallback_category(op)) for op, fn in TORCH_FORMULAS.items()}  # fallback
        table.update(ours)
        table.update({getattr(op, name): fn for op, fn in ours.items() for name in op.overloads()})
        return {op: self._tallied(fn) for op, fn in table.items()}

    # --- the rules: each returns (category, MACs) ---------------------------------------------------------
    @staticmethod
    def _conv(x, w, bias, stride, padding, dilation, transposed, *rest, out_val=None, **kw) -> tuple[str, int]:
        per_position = math.prod(w.shape[1:])  # Cin/groups * kh * kw (transposed: Cout/groups * kh * kw)
        macs = (_numel(x) if transposed else _numel(out_val)) * per_position
        return "conv", macs + (_numel(out_val) if bias is not None else 0)

    def _matmul(self, first: int) -> Callable[..., tuple[str, int]]:
        def rule(*args: Any, out_val: Any = None, **kw: Any) -> tuple[str, int]:
            a, b = args[first], args[first + 1]  # (..., M, K) @ (..., K, N)
            linear = self._is_weight(a) or self._is_weight(b)
            return ("linear" if linear else "attention"), _numel(a) * b.shape[-1]

        return rule

    @staticmethod
    def _sdpa(q, k, v, *args, out_val=None, **kw) -> tuple[str, int]:
        # q: (B, heads, N, d); k: (B, heads_kv, Nk, d); v: (B, heads_kv, Nk, dv); q @ k^T then attn @ v
        return "attention", _numel(q) // q.shape[-1] * k.shape[-2] * (q.shape[-1] + v.shape[-1])

    @staticmethod
    def _norm(x, weight, *args, out_val=None, **kw) -> tuple[str, int]:
        return "norm", _numel(x) * (2 if weight is not None else 1)

    @staticmethod
    def _input_numel(category: str) -> Callable[..., tuple[str, int]]:
        def rule(x: torch.Tensor, *args: Any, out_val: Any = None, **kw: Any) -> tuple[str, int]:
            return category, _numel(x)

        return rule

    @staticmethod
    def _upsample(*args: Any, out_val: Any = None, **kw: Any) -> tuple[str, int]:
        return "upsample", _numel(out_val)

    @staticmethod
    def _fused_linear(x, *args, out_val=None, **kw) -> list[tuple[str, int]]:
        # (X, W, B, attr, scalars, algorithm) or .binary (X, other, W, B, attr): a Linear [+ ReLU] [+ residual]
        counts = [("linear", _numel(x) * out_val.shape[-1])]
        if isinstance(args[2], str) and args[2] == "relu":  # unary post-op of the plain overload
            counts.append(("activation", _numel(out_val)))
        return counts

    @staticmethod
    def _fused_conv(x, *args, out_val=None, **kw) -> list[tuple[str, int]]:
        # (X, W, B, padding, stride, dilation, groups, attr, ...) or .binary (X, other, W, B, ..., unary_attr, ...)
        binary = not isinstance(args[2], (list, tuple))
        w, bias, unary = (args[1], args[2], args[9]) if binary else (args[0], args[1], args[6])
        counts = [("conv", _numel(out_val) * math.prod(w.shape[1:]) + (_numel(out_val) if bias is not None else 0))]
        if unary == "relu":
            counts.append(("activation", _numel(out_val)))
        return counts

    @staticmethod
    def _halved(fn: Callable[..., int], category: str) -> Callable[..., tuple[str, int]]:
        def rule(*args: Any, out_val: Any = None, **kw: Any) -> tuple[str, int]:
            return category, fn(*args, out_val=out_val, **kw) // 2

        return rule

    # --- plumbing ---------------------------------------------------------------------------------------------
    def _is_weight(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and StorageWeakRef(t.untyped_storage()) in self._weights

    def _tallied(self, fn: Callable[..., Any]) -> Callable[..., int]:
        def rule(*args: Any, out_val: Any = None, **kw: Any) -> int:
            result = fn(*args, out_val=out_val, **kw)  # (category, MACs), or a list of them for fused kernels
            counted = 0
            for category, macs in [result] if isinstance(result, tuple) else result:
                self.by_category[category] += int(macs)
                counted += int(macs) if self.counted[category] else 0
            return counted

        rule._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode: pass tensors, not shapes
        return rule
