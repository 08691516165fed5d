"""The paper's comparison backbones (Table 4): torchvision's ResNet-50 and Swin-T behind the dense-task adapter.

Both follow :class:`~pvtv2.models.backbone.StageBackbone` (``out_channels_list``, ``strides``, frozen stages,
``norm_eval``), so every detector builder takes ``backbone="resnet50"`` / ``"swin_t"`` with the FPN wiring it uses
for a PVT. Settings follow mmdet's configs for them:

- ResNet-50 (mmdet ``ResNet(depth=50, frozen_stages=1, norm_eval=True, style='pytorch')``): stem + stage 1 frozen
  by default (``trainable_stages=3``), BatchNorm statistics never updated (every mmdet ResNet detector sets
  ``norm_eval=True``); ``norm_eval=True`` here also freezes their affine parameters (torchvision's
  ``FrozenBatchNorm2d``). ImageNet weights: ``ResNet50_Weights.IMAGENET1K_V1`` (mmdet's ``torchvision://resnet50``).
- Swin-T (mmdet ``SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
  drop_path_rate=0.2, patch_norm=True)``): all stages train, a LayerNorm on each returned map (mmdet's ``norm{i}``,
  new weights); torchvision's final norm and classifier are dropped. ImageNet weights: ``Swin_T_Weights.IMAGENET1K_V1``
  (torchvision's own training, 81.5 % top-1, not Microsoft's 81.2 % file mmdet's config loads).
"""

from __future__ import annotations

import os
import socket
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.error import URLError

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, Swin_T_Weights
from torchvision.models._api import WeightsEnum
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.models.swin_transformer import SwinTransformer

from ..errors import CheckpointError, PVTError
from .backbone import NUM_STAGES, StageBackbone, WeightsSource, trainable_stages_or

SWIN_T = {"patch_size": [4, 4], "embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24],
          "window_size": [7, 7], "stochastic_depth_prob": 0.2}  # torchvision's swin_t = mmdet's Swin-T config


class ResNetBackbone(StageBackbone):
    """Stage outputs (strides 4-32) of a torchvision ResNet; stage 0 is the stem and ``layer1``.

    Args:
        model: a torchvision :class:`~torchvision.models.ResNet` (its ``fc`` is dropped).
        stages, frozen_stages, norm_eval: see :class:`~pvtv2.models.backbone.StageBackbone`; BatchNorm statistics
            are never updated whatever ``norm_eval`` says.
    """

    norm_types = (nn.BatchNorm2d,)
    frozen_statistics = True

    def __init__(self, model: ResNet, stages: Sequence[int] = (0, 1, 2, 3), *, frozen_stages: int = 1,
                 norm_eval: bool = False) -> None:
        layers = [model.layer1, model.layer2, model.layer3, model.layer4]
        channels = [layer[-1].conv3.out_channels for layer in layers]
        model.fc = nn.Identity()
        super().__init__([[model.conv1, model.bn1, model.layer1], *([m] for m in layers[1:])], channels,
                         [4, 8, 16, 32], stages, frozen_stages=frozen_stages, norm_eval=norm_eval)
        self.model = model
        self.train()

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """``(B, 3, H, W)`` -> ``{"0": (B, C_a, H/s_a, W/s_a), ...}`` for the selected stages."""
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))  # (B, 64, H/4, W/4)
        out = OrderedDict()
        for i, layer in enumerate((m.layer1, m.layer2, m.layer3, m.layer4)[: self.stages[-1] + 1]):
            x = layer(x)
            if i in self.stages:
                out[str(len(out))] = x
        return out


class SwinBackbone(StageBackbone):
    """Stage outputs (strides 4-32) of a torchvision Swin Transformer, each through its own LayerNorm (mmdet's
    ``norm{i}``); stage ``i`` is its patch embedding or merging followed by its blocks.

    Args:
        model: a torchvision :class:`~torchvision.models.SwinTransformer` (its final norm and head are dropped).
        stages, frozen_stages, norm_eval: see :class:`~pvtv2.models.backbone.StageBackbone`.
    """

    def __init__(self, model: SwinTransformer, stages: Sequence[int] = (0, 1, 2, 3), *, frozen_stages: int = 0,
                 norm_eval: bool = False) -> None:
        f = model.features  # [patch embed, blocks 1, merge, blocks 2, merge, blocks 3, merge, blocks 4]
        channels = [f[2 * i + 1][-1].norm1.normalized_shape[0] for i in range(NUM_STAGES)]
        out_norms = nn.ModuleDict({str(s): nn.LayerNorm(channels[s]) for s in stages})
        model.norm, model.head = nn.Identity(), nn.Identity()
        per_stage = [[f[2 * i], f[2 * i + 1], *([out_norms[str(i)]] if str(i) in out_norms else [])]
                     for i in range(NUM_STAGES)]
        super().__init__(per_stage, channels, [4, 8, 16, 32], stages, frozen_stages=frozen_stages,
                         norm_eval=norm_eval)
        self.model = model
        self.out_norms = out_norms
        self.train()

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """``(B, 3, H, W)`` -> ``{"0": (B, C_a, H/s_a, W/s_a), ...}`` for the selected stages (contiguous)."""
        out = OrderedDict()
        for i in range(self.stages[-1] + 1):
            x = self.model.features[2 * i + 1](self.model.features[2 * i](x))  # (B, H/s, W/s, C) channels-last
            if i in self.stages:
                out[str(len(out))] = self.out_norms[str(i)](x).permute(0, 3, 1, 2).contiguous()  # -> (B, C, h, w)
        return out


def resnet50_backbone(
    *,
    stages: Sequence[int] = (0, 1, 2, 3),
    weights: WeightsSource = None,
    trainable_stages: int | None = None,
    norm_eval: bool = False,
    overrides: dict[str, Any] | None = None,
) -> ResNetBackbone:
    """torchvision's ResNet-50 as a dense-task backbone (mmdet's ``frozen_stages=1`` by default).

    Args:
        stages, trainable_stages, norm_eval: see :func:`pvtv2.models.backbone.build_backbone` (``None``: 3).
        weights: ``"official"`` (``ResNet50_Weights.IMAGENET1K_V1``, from torch.hub's cache or downloaded into it),
            or a checkpoint path / state dict with torchvision's key names.
        overrides: ``depths`` (blocks per stage, default 3, 4, 6, 3) or other ``ResNet`` constructor arguments.
    """
    kwargs = dict(overrides or {})
    model = ResNet(Bottleneck, list(kwargs.pop("depths", (3, 4, 6, 3))), **_checked(kwargs, ResNet, "resnet50"))
    _load(model, weights, ResNet50_Weights.IMAGENET1K_V1, "conv1.weight", ("fc.",))
    frozen = NUM_STAGES - trainable_stages_or(trainable_stages, NUM_STAGES - 1)
    return ResNetBackbone(model, stages, frozen_stages=frozen, norm_eval=norm_eval)


def swin_t_backbone(
    *,
    stages: Sequence[int] = (0, 1, 2, 3),
    weights: WeightsSource = None,
    trainable_stages: int | None = None,
    norm_eval: bool = False,
    overrides: dict[str, Any] | None = None,
) -> SwinBackbone:
    """torchvision's Swin-T as a dense-task backbone (drop-path 0.2, as mmdet's config).

    Args:
        stages, trainable_stages, norm_eval: see :func:`pvtv2.models.backbone.build_backbone` (``None``: all 4).
        weights: ``"official"`` (``Swin_T_Weights.IMAGENET1K_V1``, from torch.hub's cache or downloaded into it),
            or a checkpoint path / state dict with torchvision's key names.
        overrides: :class:`~torchvision.models.SwinTransformer` arguments (``depths``, ``num_heads``...).
    """
    kwargs = {**SWIN_T, **_checked(dict(overrides or {}), SwinTransformer, "swin_t")}
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    model = SwinTransformer(**kwargs)
    _load(model, weights, Swin_T_Weights.IMAGENET1K_V1, "features.0.0.weight", ("head.", "norm."))
    frozen = NUM_STAGES - trainable_stages_or(trainable_stages, NUM_STAGES)
    return SwinBackbone(model, stages, frozen_stages=frozen, norm_eval=norm_eval)


COMPARISON_BACKBONES: dict[str, Callable[..., StageBackbone]] = {
    "resnet50": resnet50_backbone,
    "swin_t": swin_t_backbone,
}


def _checked(kwargs: dict[str, Any], cls: type, name: str) -> dict[str, Any]:
    import inspect

    known = set(inspect.signature(cls).parameters) - {"block", "layers", "num_classes"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise PVTError(f"unknown {name} backbone override(s) {unknown}; choose from {sorted(known | {'depths'})}")
    return kwargs


def _load(model: nn.Module, weights: WeightsSource, official: WeightsEnum, anchor: str,
          unused: tuple[str, ...]) -> None:
    """Load ``weights`` (``"official"``, a path or a state dict in torchvision's names, possibly nested under a
    prefix such as a detector's ``backbone.body.model.``) into ``model``, all but the ``unused`` keys required."""
    if weights is None:
        return
    from ..weights import read_checkpoint
    from ..weights.io import unwrap_state_dict

    where = official.url if weights == "official" else str(weights) if not isinstance(weights, dict) else "state dict"
    sd = _download(official) if weights == "official" else weights if isinstance(weights, dict) else \
        unwrap_state_dict(read_checkpoint(weights), where=where)
    prefix = next((k[: -len(anchor)] for k in sd if k.endswith(anchor)), None)
    if prefix is None:
        raise CheckpointError(f"{where} has no {anchor!r}: not torchvision {type(model).__name__} weights")
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and not k[len(prefix):].startswith(unused)}
    try:
        missing, _ = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise CheckpointError(f"{where} does not fit this {type(model).__name__}: {str(e).splitlines()[-1].strip()}") \
            from None
    missing = [k for k in missing if not k.startswith(unused)]
    if missing:
        raise CheckpointError(f"{where} lacks {len(missing)} backbone tensors ({', '.join(missing[:3])}...)")


def _download(weights: WeightsEnum) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights from torch.hub's cache, downloaded into it (hash-checked) when absent."""
    from ..weights import read_checkpoint
    from ..weights.download import download_bars

    url = weights.url
    dst = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not dst.is_file():
        old = socket.getdefaulttimeout()
        try:
            if os.environ.get("PVTV2_OFFLINE"):
                raise URLError("PVTV2_OFFLINE is set")
            dst.parent.mkdir(parents=True, exist_ok=True)
            socket.setdefaulttimeout(30)
            torch.hub.download_url_to_file(url, str(dst), hash_prefix=dst.stem.rsplit("-", 1)[-1],
                                           progress=download_bars())
        except (URLError, OSError, RuntimeError) as e:
            raise CheckpointError(f"could not download torchvision's {weights} ({getattr(e, 'reason', e)}); "
                                  f"put {url} at {dst} or pass backbone_weights=PATH") from None
        finally:
            socket.setdefaulttimeout(old)
    return read_checkpoint(dst)
