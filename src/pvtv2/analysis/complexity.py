"""Parameters and GFLOPs of any model at any input size, in the paper's convention (mmcv MACs + attention products).

Counting runs the model once under ``torch.utils.flop_counter.FlopCounterMode`` with the rules of
:mod:`.counting`. It first tries the ``meta`` device (shapes only, no arithmetic: B5 at 1120 px counts in well under a
second) and falls back to a real forward pass on the model's device for models that need values (a detector's
post-processing, data-dependent shapes).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode

from ..errors import PVTError
from .counting import MMCVRules
from .meta import MetaShortcuts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Complexity:
    """The cost of one forward pass of one image.

    ``macs`` / ``gflops`` follow the ``attn_matmul`` switch of :func:`complexity`; ``attn_matmul_macs`` is the
    attention-product term whatever the switch, so both conventions come from one count.
    """

    params: int  # parameters (shared ones once)
    macs: int  # multiply-accumulates in the paper's convention (the paper calls them FLOPs)
    attn_matmul_macs: int  # the q @ k and attn @ v products (included in macs iff attn_matmul)
    input_size: tuple[int, int]
    attn_matmul: bool
    by_module: dict[str, int] = field(default_factory=dict)  # module path -> MACs, sub-modules included
    by_category: dict[str, int] = field(default_factory=dict)  # conv / linear / attention / norm / ... -> MACs
    device: str = "meta"  # where the count ran: "meta" (shapes only) or the model's device

    @property
    def gflops(self) -> float:
        """GMACs, which the paper (and mmcv) call GFLOPs."""
        return self.macs / 1e9

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gflops_without_attn_matmul(self) -> float:
        return (self.macs - (self.attn_matmul_macs if self.attn_matmul else 0)) / 1e9

    @property
    def gflops_with_attn_matmul(self) -> float:
        return (self.macs + (0 if self.attn_matmul else self.attn_matmul_macs)) / 1e9

    def table(self, depth: int = 2) -> str:
        """The per-module breakdown, one line per module, ``depth`` names deep (``stages.0`` is 1, ``.blocks.0`` 2)."""
        lines = [f"{'module':<40} {'GFLOPs':>9} {'share':>6}"]
        total = max(self.macs, 1)
        shown = [n for n, macs in self.by_module.items() if _level(n) <= depth and macs]
        for name in shown:
            macs = self.by_module[name]
            indent = "  " * sum(name.startswith(other + ".") for other in shown)  # one step per listed ancestor
            lines.append(f"{indent + name:<40} {macs / 1e9:>9.4f} {100 * macs / total:>5.1f}%")
        lines.append(f"{'total':<40} {self.gflops:>9.4f}")
        return "\n".join(lines)


def count_params(model: nn.Module) -> int:
    """Number of parameters, shared ones counted once (frozen ones included, unlike mmcv)."""
    return sum(p.numel() for p in model.parameters())


def complexity(
    model: nn.Module,
    input_size: int | Sequence[int] = (224, 224),
    attn_matmul: bool = True,
    *,
    inputs: Any = None,
    upsample: bool = False,
    device: str | torch.device | None = "meta",
) -> Complexity:
    """Parameters and GFLOPs (MACs) of ``model`` for one ``input_size`` image, in the paper's convention.

    Args:
        model: any ``nn.Module`` (its weights are neither read nor changed; it is counted in eval mode).
        input_size: ``(H, W)`` or one side of a square image; the model gets a ``(1, C, H, W)`` tensor with C the
            in-channels of its first convolution (3 if it has none).
        attn_matmul: include the attention products ``q @ k`` and ``attn @ v`` (the paper's figures) or not
            (mmcv's raw count).
        inputs: call ``model(*inputs)`` instead (a tuple of arguments, or a single argument such as a list of
            image tensors for a torchvision detector); ``input_size`` then only labels the result.
        upsample: also count interpolation (mmcv ignores ``F.interpolate``; off by default).
        device: ``"meta"`` counts shapes only and falls back to the model's own device if the model cannot run on
            meta; ``None`` runs on the model's device (real arithmetic).
    """
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(int(s) for s in input_size)
    if len(size) != 2:
        raise ValueError(f"input_size must be (H, W) or an int, got {input_size!r}")
    if inputs is None:
        inputs = (torch.zeros(1, _in_channels(model), *size, dtype=_dtype(model), device=_device(model)),)
    elif not isinstance(inputs, tuple):
        inputs = (inputs,)
    was_training = model.training
    model.eval()
    try:
        if device is not None and str(device) == "meta":
            try:
                return _count(model, inputs, size, attn_matmul, upsample, on_meta=True)
            except Exception as e:  # noqa: BLE001 - any failure on meta means "needs real values"
                if _device(model).type == "meta":  # nothing real to fall back to
                    raise PVTError(f"cannot count {type(model).__name__} at {size[0]}x{size[1]}: "
                                   f"{type(e).__name__}: {e}") from e
                log.debug("counting %s on meta failed (%s: %s); counting with real tensors",
                          type(model).__name__, type(e).__name__, e)
        return _count(model, inputs, size, attn_matmul, upsample, on_meta=False)
    finally:
        model.train(was_training)


def _count(
    model: nn.Module, inputs: tuple, size: tuple[int, int], attn_matmul: bool, upsample: bool, on_meta: bool
) -> Complexity:
    state = dict(model.named_parameters()) | dict(model.named_buffers())  # tied weights once (functional_call ties)
    if on_meta:  # same shapes and dtypes, no storage: the model object is untouched
        state = {name: torch.empty_like(t, device="meta") for name, t in state.items()}
        inputs = tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, inputs)
    rules = MMCVRules(state.values(), attn_matmul=attn_matmul, upsample=upsample)
    counter = FlopCounterMode(display=False, custom_mapping=rules.mapping())
    with torch.no_grad(), MetaShortcuts() if on_meta else contextlib.nullcontext(), counter:  # counter on top
        if on_meta:
            functional_call(model, state, inputs)
        else:
            model(*inputs)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    by_module = {
        name[len(root) + 1 :]: sum(ops.values())
        for name, ops in sorted(counts.items(), key=lambda kv: _natural(kv[0]))
        if name.startswith(root + ".")
    }
    return Complexity(
        params=count_params(model),
        macs=counter.get_total_flops(),
        attn_matmul_macs=rules.by_category.get("attention", 0),
        input_size=size,
        attn_matmul=attn_matmul,
        by_module=by_module,
        by_category=dict(rules.by_category),
        device="meta" if on_meta else str(_device(model)),
    )


def _level(path: str) -> int:
    """Depth of a module path, list indices not counted: ``stages.0.blocks.1.attn`` -> 3."""
    return sum(not part.isdigit() for part in path.split("."))


def _natural(path: str) -> list[tuple[int, int | str]]:
    """Sort key putting ``stages.2`` before ``stages.10`` and a module before its children."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in path.split(".")]


def _first_param(model: nn.Module) -> torch.Tensor | None:
    return next(iter(model.parameters()), None)


def _device(model: nn.Module) -> torch.device:
    p = _first_param(model)
    return p.device if p is not None else torch.device("cpu")


def _dtype(model: nn.Module) -> torch.dtype:
    p = _first_param(model)
    return p.dtype if p is not None and p.is_floating_point() else torch.float32


def _in_channels(model: nn.Module) -> int:
    conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    return conv.in_channels if conv is not None else 3
