"""Exponential moving average of the weights, on PyTorch's ``AveragedModel``.

How a task uses it::

    ema = create_ema(model, decay=0.9998) if args.ema else None   # a copy on the same device, in eval mode
    ...after each optimizer step:  ema.update_parameters(model)
    evaluate(ema.module, ...)       # and save_checkpoint(..., ema=ema)  (its state_dict resumes exactly)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .distributed import unwrap_model


def create_ema(model: nn.Module, decay: float = 0.9998, device: torch.device | None = None) -> AveragedModel:
    """An EMA copy of ``model`` (unwrapped from DDP/compile); buffers (none in PVT) are averaged too.

    Args:
        model: the model being trained.
        decay: weight of the old average per update (0.9998 ~ a 5000-step horizon).
        device: where the copy lives (default: the model's device).
    """
    ema = AveragedModel(unwrap_model(model), device=device, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema
