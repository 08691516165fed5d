"""Detection models: builders in train/eval mode, FPN wiring, frozen stages, backbone weights, complexity rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pvtv2
from pvtv2.detection import DETECTORS, PVTWithFPN, build_detector, complexity_rows, fcos, mask_rcnn, retinanet
from pvtv2.errors import PVTError
from pvtv2.models.backbone import PVTBackbone
from pvtv2.detection.inference import build_from_meta, detector_meta, load_detector, save_detector

TINY = {"depths": (1, 1, 1, 1)}


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: much faster than two on the shared, oversubscribed CPUs these tests run on."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
SIZES = {"min_size": 64, "max_size": 96}


def _batch(masks: bool = False) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    targets = [{"boxes": torch.tensor([[8.0, 6.0, 50.0, 44.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # an image without objects
    if masks:
        targets[0]["masks"] = torch.zeros(1, 64, 80, dtype=torch.uint8)
        targets[0]["masks"][0, 6:44, 8:50] = 1
        targets[1]["masks"] = torch.zeros(0, 72, 64, dtype=torch.uint8)
    return images, targets


@pytest.mark.parametrize(
    ("builder", "loss_keys", "levels"),
    [
        (retinanet, {"loss_cls", "loss_bbox"}, ["0", "1", "2", "p6", "p7"]),
        (fcos, {"loss_cls", "loss_bbox", "loss_centerness"}, ["0", "1", "2", "3", "pool"]),
        (mask_rcnn, {"loss_cls", "loss_bbox", "loss_mask", "loss_rpn_cls", "loss_rpn_bbox"},
         ["0", "1", "2", "3", "pool"]),
    ],
)
def test_builders_train_and_eval(builder, loss_keys: set[str], levels: list[str]) -> None:
    few = {"rpn_post_nms_top_n_train": 64, "rpn_post_nms_top_n_test": 32, "box_batch_size_per_image": 32,
           "box_detections_per_img": 10} if builder is mask_rcnn else {}  # fewer RoIs: seconds, not minutes, on CPU
    model = builder(backbone="pvt_v2_b0", num_classes=3, backbone_overrides=TINY, **SIZES, **few)
    images, targets = _batch(masks=builder is mask_rcnn)
    model.train()
    losses = model(images, targets)
    assert set(losses) == loss_keys and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.body.model.stages[0].patch_embed.proj.weight.grad is not None  # gradient reaches stage 1
    model.eval()
    with torch.no_grad():
        feats = model.backbone(torch.rand(1, 3, 64, 96))
        out = model(images)
    assert list(feats) == levels and all(f.shape[1] == 256 for f in feats.values())
    assert len(out) == 2 and {"boxes", "scores", "labels"} <= set(out[0])
    if builder is mask_rcnn:
        assert out[0]["masks"].shape[1:] == (1, 64, 80)  # masks in original image pixels


def test_fpn_wiring_as_released() -> None:
    ret = retinanet(backbone="pvt_v2_b0", num_classes=3, backbone_overrides=TINY)
    body, extra = ret.backbone.body, ret.backbone.fpn.extra_blocks
    assert body.stages == (1, 2, 3) and body.out_channels_list == [64, 160, 256]
    # P6 from the stage-4 output even though B0's C5 has 256 channels = FPN width (torchvision would take P5)
    assert not extra.use_P5 and extra.p6.in_channels == 256
    assert ret.backbone.strides == [8, 16, 32, 64, 128]
    assert [len(s) for s in ret.anchor_generator.sizes] == [3] * 5 and ret.anchor_generator.sizes[0] == pytest.approx(
        (32, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)))  # mmdet's exact octave scales: 32, 40.32, 50.80
    small = retinanet(backbone="pvt_v2_b0", num_classes=3, backbone_overrides=TINY, anchor_scale=2)
    assert small.anchor_generator.sizes[0][0] == 16 and small.anchor_generator.sizes[-1][0] == 256  # 2 strides
    mrc = mask_rcnn(backbone="pvt_v2_b1", num_classes=3, backbone_overrides=TINY)
    assert mrc.backbone.body.stages == (0, 1, 2, 3) and mrc.backbone.strides == [4, 8, 16, 32, 64]
    assert mrc.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    tv_fcos = fcos(backbone="pvt_v2_b0", num_classes=3, stages=(1, 2, 3), backbone_overrides=TINY)
    assert tv_fcos.backbone.fpn.extra_blocks.use_P5 and tv_fcos.anchor_generator.sizes[-1] == (128,)


def test_retinanet_v2_head_and_giou_loss_are_torchvisions() -> None:
    """``head_norm="gn"`` / ``box_loss="giou"``: torchvision's ``retinanet_resnet50_fpn_v2`` head (GroupNorm in the
    towers, no bias before it) and its box losses (mmdet's own equality: tests/test_oracle_retinanet.py)."""
    from torchvision.models.detection._utils import _box_loss

    model = retinanet(backbone="pvt_v2_b0", num_classes=3, backbone_overrides=TINY, fpn_channels=64,
                      head_norm="gn", box_loss="giou")
    tower = model.head.regression_head.conv
    assert len(tower) == 4 and all(isinstance(t[1], torch.nn.GroupNorm) and t[1].num_groups == 32 for t in tower)
    assert tower[0][0].bias is None
    g = torch.Generator().manual_seed(0)
    anchors = torch.rand(6, 2, generator=g).mul(100).repeat(1, 2) + torch.tensor([0.0, 0.0, 20.0, 30.0])
    boxes = anchors + torch.randn(6, 4, generator=g) * 5
    deltas = torch.randn(6, 4, generator=g) * 0.3
    expected = _box_loss("giou", model.box_coder, anchors, boxes, deltas)
    assert model.box_loss_sum(deltas, boxes, anchors).item() == pytest.approx(expected.item(), rel=1e-6)
    released = retinanet(backbone="pvt_v2_b0", num_classes=3, backbone_overrides=TINY, fpn_channels=64)
    assert released.box_loss_sum(deltas, boxes, anchors).item() == pytest.approx(
        _box_loss("l1", released.box_coder, anchors, boxes, deltas).item(), rel=1e-6)
    with pytest.raises(ValueError, match="head_norm"):
        retinanet(backbone="pvt_v2_b0", num_classes=3, backbone_overrides=TINY, head_norm="bn")
    with pytest.raises(ValueError, match="box_loss"):
        retinanet(backbone="pvt_v2_b0", num_classes=3, backbone_overrides=TINY, box_loss="smooth_l1")


def test_adapter_uses_feature_info_and_forward_features() -> None:
    model = pvtv2.create_model("pvt_v2_b0", num_classes=0, **TINY).eval()
    body = PVTBackbone(model, (0, 2)).eval()
    x = torch.rand(1, 3, 70, 90)
    out = body(x)
    ref = model.forward_features(x)
    assert list(out) == ["0", "1"] and torch.equal(out["1"], ref[2]) and out["1"].is_contiguous()
    assert body.out_channels_list == [32, 160] and body.strides == [4, 16]
    with pytest.raises(ValueError, match="increasing"):
        PVTBackbone(model, (2, 1))
    with pytest.raises(ValueError, match="extra"):
        PVTWithFPN(body, extra="p8")


def test_frozen_stages_are_really_frozen() -> None:
    model = retinanet(backbone="pvt_v2_b0", num_classes=3, trainable_stages=2, norm_eval=True,
                      backbone_overrides={**TINY, "drop_path_rate": 0.5}, **SIZES)
    stages = model.backbone.body.model.stages
    model.train()
    assert not stages[0].training and not stages[1].training and stages[2].training  # frozen: eval mode, no drop-path
    assert all(not m.training for m in stages[3].modules() if isinstance(m, torch.nn.LayerNorm))  # norm_eval
    assert not any(p.requires_grad for s in stages[:2] for p in s.parameters())
    assert not stages[2].norm.weight.requires_grad and stages[2].blocks[0].attn.q.weight.requires_grad
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    images, targets = _batch()
    sum(model(images, targets).values()).backward()
    opt.step()
    after = model.state_dict()
    prefix = "backbone.body.model.stages."
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith((prefix + "0.", prefix + "1.")))
    assert torch.equal(before[prefix + "2.norm.weight"], after[prefix + "2.norm.weight"])
    assert not torch.equal(before[prefix + "2.blocks.0.attn.q.weight"], after[prefix + "2.blocks.0.attn.q.weight"])
    assert not torch.equal(before["head.classification_head.cls_logits.weight"],
                           after["head.classification_head.cls_logits.weight"])
    with pytest.raises(ValueError, match="trainable_stages"):
        retinanet(backbone="pvt_v2_b0", trainable_stages=5, backbone_overrides=TINY)


@pytest.mark.parametrize("fmt", ["official", "timm", "pvtv2"])
def test_backbone_weights_in_any_format(tmp_path: Path, fmt: str) -> None:
    src = pvtv2.create_model("pvt_v2_b0", **TINY)  # a classifier with its head: the detector drops it
    path = pvtv2.save_weights(src, tmp_path / f"b0_{fmt}.safetensors", format=fmt)
    det = retinanet(backbone="pvt_v2_b0", num_classes=3, backbone_weights=str(path), backbone_overrides=TINY)
    got = det.backbone.body.model.state_dict()
    assert all(torch.equal(v, got[k]) for k, v in src.state_dict().items() if not k.startswith("head."))


def test_backbone_weights_from_a_detection_checkpoint(tmp_path: Path) -> None:
    meta = detector_meta("mask_rcnn", backbone="pvt_v2_b0", class_names=["bg", "a", "b"], min_size=64, max_size=96,
                         backbone_overrides=TINY)
    det = build_from_meta(meta)
    path = save_detector(det, meta, tmp_path / "det.pth")
    again, meta2 = load_detector(path)
    assert meta2 == meta and all(torch.equal(v, again.state_dict()[k]) for k, v in det.state_dict().items())
    ret = retinanet(backbone="pvt_v2_b0", num_classes=5, backbone_weights=str(path), backbone_overrides=TINY)
    a, b = det.backbone.body.model.state_dict(), ret.backbone.body.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_build_detector_rejects_unknown_arch() -> None:
    with pytest.raises(PVTError, match="retinanet"):
        build_detector("yolo")


@pytest.mark.parametrize("arch", sorted(DETECTORS))
def test_every_registered_detector_counts_object_classes_only(arch: str) -> None:
    """``num_classes`` = K object classes, labels 1..K in targets and outputs (mmdet's count)."""
    spec = DETECTORS[arch]
    few = {"rpn_post_nms_top_n_train": 64, "rpn_post_nms_top_n_test": 32, "box_batch_size_per_image": 32,
           "box_detections_per_img": 10} if spec.masks else {}
    model = spec.build(backbone="pvt_v2_b0", num_classes=2, backbone_overrides=TINY, score_thresh=0.0, **SIZES,
                       **few)
    images, targets = _batch(masks=spec.masks)
    model.train()
    assert all(torch.isfinite(v) for v in model(images, targets).values())  # label 2 = the last class
    model.eval()
    with torch.no_grad():
        out = model(images)
        dense = spec.dense(model, torch.rand(1, 3, 64, 96))
    labels = torch.cat([o["labels"] for o in out])
    assert len(labels) and labels.min() >= 1 and labels.max() <= 2
    assert dense and all(isinstance(v, torch.Tensor) for v in dense.values())
    if "cls_logits" in dense:
        assert dense["cls_logits"].shape[-1] == 2


@pytest.mark.parametrize("arch", sorted(DETECTORS))
def test_every_registered_detector_head_follows_fpn_channels(arch: str) -> None:
    """``fpn_channels`` narrows the whole detector, not only the FPN: no conv after the backbone keeps the released
    256 channels (torchvision's Mask R-CNN mask head did, and made it 8x slower than the rest on CPU)."""
    narrow = {**TINY, "embed_dims": (32, 64, 160, 192)}  # no stage 256 wide either: only a head could be
    model = DETECTORS[arch].build(backbone="pvt_v2_b0", num_classes=3, backbone_overrides=narrow, fpn_channels=64)
    body = {id(m) for m in model.backbone.body.modules()}
    convs = [(n, m) for n, m in model.named_modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and id(m) not in body]
    assert convs
    wide = [n for n, m in convs if 256 in (m.in_channels, m.out_channels)]
    assert not wide, f"{arch}: still 256 channels wide: {wide}"


def test_complexity_rows_match_the_paper_for_b0() -> None:
    rows = complexity_rows(["pvt_v2_b0"])
    by_head = {r["head"]: r for r in rows}
    assert set(by_head) == {"retinanet", "mask_rcnn"}
    for r in rows:
        assert r["input_size"] == "1280x800" and r["gflops"] > 100
        assert abs(r["params_m"] - r["paper_params_m"]) < 0.1  # Table 3: 13.0 / 23.5 M
    assert by_head["mask_rcnn"]["gflops"] > by_head["retinanet"]["gflops"]


def test_transform_resizes_at_test_time_unless_kept() -> None:
    """The trainer sets ``_skip_resize`` (its data pipeline resized the training images): evaluation still resizes
    to the test scale; ``keep_size`` keeps test images at scale 1 (the oracle's padded batches)."""
    from pvtv2.detection.modeling.transform import DetectionTransform

    t = DetectionTransform(64, 100, [0.5] * 3, [0.2] * 3, _skip_resize=True)
    images = [torch.rand(3, 32, 48), torch.rand(3, 30, 40)]
    assert t.train()(images, [{"boxes": torch.zeros(0, 4)}] * 2)[0].image_sizes == [(32, 48), (30, 40)]
    assert t.eval()(images)[0].image_sizes == [(64, 96), (64, 85)]
    t.keep_size = True
    assert t.eval()(images)[0].image_sizes == [(32, 48), (30, 40)]


@pytest.mark.parametrize("arch", sorted(DETECTORS))
def test_every_registered_detector_computes_its_losses_in_fp32_under_autocast(arch: str) -> None:
    """mmdet's ``force_fp32``: under bf16 autocast (``--precision bf16``) the heads may run in bf16 but every loss
    is computed, and returned, in float32 (a bf16 focal loss cannot represent ``1 - p`` below 2^-8; RetinaNet trained
    in bf16 that way stayed near zero AP), and it stays close to the fp32 loss of the same weights."""
    model = DETECTORS[arch].build(backbone="pvt_v2_b0", num_classes=3, backbone_overrides=TINY, fpn_channels=64).train()
    model.transform._skip_resize = True
    images, targets = _batch(masks=DETECTORS[arch].masks)
    torch.manual_seed(0)
    full = model(images, targets)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reduced = model(images, targets)
    assert set(reduced) == set(full)
    for name, loss in reduced.items():
        assert loss.dtype == torch.float32 and torch.isfinite(loss), f"{arch} {name}: {loss}"
        if arch != "sparse_rcnn":  # its Hungarian matching of untrained queries flips on bf16 rounding (measured:
            # stage-0 boxes 8 px apart of 593, later stages' random deltas grow them to 1,800 px): values differ
            assert loss.item() == pytest.approx(full[name].item(), rel=0.1, abs=1e-2), name
    model.zero_grad(set_to_none=True)
    sum(reduced.values()).backward()  # 64-80 px images: P6 / P7 are 1x1 maps (see pvtv2.layers.conv; its own test
    # poisons the memory, which this one cannot do for these larger gradients)
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"{arch}: non-finite bf16 gradients in {bad[:3]}"
