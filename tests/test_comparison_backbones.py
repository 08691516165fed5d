"""The Table 4 comparison backbones (torchvision's ResNet-50 and Swin-T) behind the dense-task adapter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pvtv2.detection import build_detector
from pvtv2.errors import CheckpointError, PVTError
from pvtv2.models.backbone import build_backbone, pvt_backbone
from pvtv2.models.comparison import ResNetBackbone, SwinBackbone

TINY = {"depths": (1, 1, 1, 1)}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("name", "cls", "channels"), [("resnet50", ResNetBackbone, [256, 512, 1024, 2048]),
                                                       ("swin_t", SwinBackbone, [96, 192, 384, 768])])
def test_stage_maps(name: str, cls: type, channels: list[int]) -> None:
    body = pvt_backbone(name, stages=(1, 2, 3), overrides=TINY)  # the old name dispatches too
    assert isinstance(body, cls) and body.out_channels_list == channels[1:] and body.strides == [8, 16, 32]
    maps = body(torch.rand(2, 3, 64, 96))
    assert [tuple(m.shape) for m in maps.values()] == [(2, c, 64 // s, 96 // s) for c, s in zip(channels[1:],
                                                                                                (8, 16, 32))]


def test_resnet_follows_mmdet_config() -> None:
    """frozen_stages=1 (stem + layer1) by default; BatchNorm statistics never move; norm_eval freezes the affine."""
    body = build_backbone("resnet50", overrides=TINY)
    m = body.model
    assert not any(p.requires_grad for p in [*m.conv1.parameters(), *m.bn1.parameters(), *m.layer1.parameters()])
    assert all(p.requires_grad for p in m.layer2.parameters())
    body.train()
    assert not any(b.training for b in body.modules() if isinstance(b, nn.BatchNorm2d))
    before = m.layer2[0].bn1.running_mean.clone()
    body(torch.rand(2, 3, 64, 64))
    assert torch.equal(m.layer2[0].bn1.running_mean, before)
    frozen = build_backbone("resnet50", overrides=TINY, trainable_stages=4, norm_eval=True)
    assert frozen.model.conv1.weight.requires_grad and not frozen.model.layer3[0].bn2.weight.requires_grad


def test_swin_stages_and_norms() -> None:
    body = build_backbone("swin_t", stages=(1, 2, 3), overrides=TINY, trainable_stages=2)
    f = body.model.features
    assert not any(p.requires_grad for p in [*f[0].parameters(), *f[3].parameters(), *body.out_norms["1"].parameters()])
    assert all(p.requires_grad for p in f[4].parameters())  # stage 3 opens with its patch merging
    assert set(body.out_norms) == {"1", "2", "3"}  # mmdet's norm{i} on each returned map
    assert isinstance(body.model.head, nn.Identity) and isinstance(body.model.norm, nn.Identity)


def test_weights(tmp_path, monkeypatch) -> None:
    """A torchvision state dict loads (also nested in a detector's keys); "official" offline fails in one line."""
    from torchvision.models.resnet import Bottleneck, ResNet

    ref = ResNet(Bottleneck, [1, 1, 1, 1])
    torch.save({"model": {f"backbone.body.model.{k}": v for k, v in ref.state_dict().items()}}, tmp_path / "r.pth")
    body = build_backbone("resnet50", overrides=TINY, weights=tmp_path / "r.pth")
    assert torch.equal(body.model.layer4[0].conv2.weight, ref.layer4[0].conv2.weight)
    with pytest.raises(CheckpointError, match="lacks"):
        build_backbone("resnet50", weights={"conv1.weight": ref.conv1.weight})
    monkeypatch.setenv("PVTV2_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match="could not download torchvision's Swin_T_Weights.IMAGENET1K_V1"):
        build_backbone("swin_t", weights="official")
    assert not (tmp_path / "hub" / "checkpoints").exists() or not any((tmp_path / "hub" / "checkpoints").iterdir())
    with pytest.raises(PVTError, match="unknown resnet50 backbone override"):
        build_backbone("resnet50", overrides={"embed_dims": (1, 2, 3, 4)})


@pytest.mark.parametrize("backbone", ["resnet50", "swin_t"])
def test_detectors_build_by_name(backbone: str) -> None:
    model = build_detector("retinanet", backbone=backbone, num_classes=3, backbone_overrides=TINY,
                           min_size=64, max_size=96)
    model.train()
    images = [torch.rand(3, 64, 80)]
    targets = [{"boxes": torch.tensor([[8.0, 6.0, 50.0, 44.0]]), "labels": torch.tensor([2])}]
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert model.backbone.body.model.features[-1][0].mlp[0].weight.grad is not None if backbone == "swin_t" else \
        model.backbone.body.model.layer4[0].conv1.weight.grad is not None
