"""Top-1 / top-5 evaluation of a classifier over a loader, summed across processes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.amp import Precision
from ..engine.distributed import reduce_sum


@torch.no_grad()
def evaluate(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable[Any],
    device: torch.device,
    precision: Precision | None = None,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Accuracy of ``model`` (a module, or a :func:`pvtv2.runtime.prepare` runner) on every batch of ``loader``
    (``(images, targets[, skipped])``).

    Each process evaluates its shard; counts are summed over processes, so every rank returns the same numbers.

    Returns:
        ``{"top1", "top5"}`` in percent, ``"loss"`` (cross-entropy), ``"n"`` images scored, ``"skipped"``
        unreadable images dropped.
    """
    module = model if isinstance(model, nn.Module) else None  # or a pvtv2.runtime runner
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    k = min(5, num_classes or 5)
    totals = torch.zeros(5, dtype=torch.float64, device=device)  # correct1, correct5, loss sum, n, skipped
    for batch in loader:
        images, targets = batch[0], batch[1]
        if len(batch) > 2:
            totals[4] += float(batch[2])
        if images.numel() == 0:
            continue
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with precision.autocast() if precision is not None else torch.autocast(device.type, enabled=False):
            logits = model(images)
        logits = logits.float()
        top = logits.topk(k, dim=1).indices  # (B, k)
        hit = top == targets[:, None]
        totals[0] += hit[:, 0].sum()
        totals[1] += hit.any(dim=1).sum()
        totals[2] += F.cross_entropy(logits, targets, reduction="sum").double()
        totals[3] += len(targets)
    if module is not None:
        module.train(was_training)
    c1, c5, loss, n, skipped = reduce_sum(totals).tolist()
    n_safe = max(n, 1.0)
    return {"top1": 100.0 * c1 / n_safe, "top5": 100.0 * c5 / n_safe, "loss": loss / n_safe, "n": int(n),
            "skipped": int(skipped)}
