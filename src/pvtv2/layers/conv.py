"""A convolution that trains under CPU bf16 autocast on maps smaller than its kernel's reach.

oneDNN's bf16 weight-gradient kernel on CPU (torch 2.14) does not write the gradient of a kernel tap that falls on
padding only: a 3x3 stride-2 convolution of a 1x1 or 3x1 map, or the 7x7 stride-4 patch embedding of a map under 4
px, leaves whatever that memory held in those taps' gradients. Measured on an AMD EPYC with avx512_bf16 (memory
filled with NaN first, 10 trials each): 3x3/2 on 1x1 non-finite 4 times, on 3x1 9 times, 7x7/4 on 1x1 to 2x3 5-8
times; fp32, and every stride-1 convolution (depth-wise too), always finite. A detector's P7 is a 1x1 map whenever
the image is under 128 px, so a bf16 RetinaNet on small images stopped with non-finite weights at its first step.
:func:`padding_safe_conv` runs such a call in fp32 (a map of a few pixels: free) and every other one as the
:class:`torch.nn.Conv2d` itself does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def padding_only_taps(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> bool:
    """Whether some tap of a ``kernel``-wide window sliding over ``size`` input pixels only ever sees padding."""
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    for tap in range(kernel):
        offset = padding - tap * dilation  # the tap reads input pixel o * stride - offset for output o
        first = max(0, -(-offset // stride))  # the first output whose read is >= 0
        if first > out - 1 or first * stride - offset > size - 1:
            return True
    return False


def _cpu_bf16_backward(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether this call's weight gradient would come from oneDNN's CPU bf16 kernel."""
    if x.device.type != "cpu" or not (torch.is_grad_enabled() and weight.requires_grad):
        return False
    autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return autocast or x.dtype == torch.bfloat16


def padding_safe_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``, in fp32 where oneDNN's bf16 weight gradient would leave padding-only taps unwritten (module doc).

    Args:
        conv: a zero-padded 2-D convolution.
        x: its input, ``(B, Cin, H, W)``.
    """
    if (conv.padding_mode == "zeros" and isinstance(conv.padding, tuple) and _cpu_bf16_backward(x, conv.weight)
            and any(padding_only_taps(n, k, s, p, d) for n, k, s, p, d in
                    zip(x.shape[-2:], conv.kernel_size, conv.stride, conv.padding, conv.dilation))):
        with torch.autocast("cpu", enabled=False):  # H or W of a few pixels: fp32 costs nothing here
            bias = None if conv.bias is None else conv.bias.float()
            y = F.conv2d(x.float(), conv.weight.float(), bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return y.to(torch.bfloat16)  # what autocast (or a bf16 model) would have returned
    return conv(x)
