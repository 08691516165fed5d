"""mmdet 2.13 and mmseg 0.14, the versions the released PVT v2 detectors and segmentors were trained with, as test
oracles on current PyTorch (CPU, no compiled operators).

Importing this module
- routes mmcv's compiled operators to torchvision: ``nms`` -> ``torchvision.ops.nms``, ``roi_align_forward`` ->
  ``torchvision.ops.roi_align`` (average pooling); every other compiled function raises when called;
- imports mmdet and mmseg, or fails the importing test module in one line, never skips (``make test`` installs
  them: the Makefile's oracle step, ``pip install -e '.[oracle]'`` plus the three pinned packages with ``--no-deps``);
- registers :class:`PVTOracle` (our PVT, returning its four stage maps) in mmdet's and mmseg's ``BACKBONES``.

The tests build each detector from a config dict carrying the facts of the released config (whai362/PVT
``detection/configs/*.py`` on mmdet's ``_base_/models``; whai362/PVTv2-Seg ``configs/sem_fpn/PVTv2/*.py``) with
:class:`PVTOracle` as the backbone: necks, heads, anchors, assigners, losses and test settings then come from mmdet
itself. The helpers below build, seed, run (``forward_dummy``, ``inference_detector``, ``forward_train``) and save
the models exactly as mmdet's checkpoint hook does.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from conftest import missing
from torch import nn

MMDET_VERSION, MMSEG_VERSION = "2.13.0", "0.14.1"


# --- mmcv's compiled operators, routed to torchvision ------------------------------------------------------------
def _nms(bboxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0) -> torch.Tensor:
    """mmcv's ``nms`` kernel: kept indices by decreasing score (offset 0: areas without +1, as torchvision)."""
    if offset != 0:
        raise NotImplementedError("mmcv nms with offset=1 (mmdet 1.x boxes) has no torchvision counterpart")
    return torchvision.ops.nms(bboxes.float(), scores.float(), float(iou_threshold))


def _roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height, aligned_width, spatial_scale,
                       sampling_ratio, pool_mode, aligned):  # noqa: ANN001 - mmcv's kernel signature
    """mmcv's ``roi_align_forward`` kernel (writes into ``output``); rois are ``(K, 5)`` = (batch index, x1, y1,
    x2, y2), torchvision's layout too."""
    if pool_mode != 1:
        raise NotImplementedError("mmcv RoIAlign pool_mode='max' has no torchvision counterpart")
    output.copy_(torchvision.ops.roi_align(input, rois, (aligned_height, aligned_width), spatial_scale,
                                           sampling_ratio, aligned))


class _CompiledOps(types.SimpleNamespace):
    """Stands in for ``mmcv._ext``: the two operators inference needs; any other one raises when called."""

    def __getattr__(self, name: str) -> Any:
        def missing(*args: Any, **kwargs: Any) -> None:
            raise NotImplementedError(f"mmcv compiled op {name!r} is not routed to torchvision in the test oracle")

        return missing


def _infer_scope() -> str:
    """mmcv's ``Registry.infer_scope`` (the top package of the module creating the registry) without
    ``inspect.stack()``, which reads the source of every frame and took ~20 s of the import with torch loaded."""
    return sys._getframe(2).f_globals["__name__"].split(".")[0]


def _install_shim() -> None:
    import mmcv.utils.ext_loader as ext_loader
    from mmcv.utils.registry import Registry

    ops = _CompiledOps(nms=_nms, roi_align_forward=_roi_align_forward)
    ext_loader.load_ext = lambda name, funcs: ops
    Registry.infer_scope = staticmethod(_infer_scope)


try:
    _install_shim()
    import mmcv
    import mmdet
    import mmseg
    from mmcv import Config
    from mmdet.datasets import CocoDataset
    from mmdet.models import BACKBONES as MMDET_BACKBONES
    from mmseg.models import BACKBONES as MMSEG_BACKBONES
except ImportError as e:  # `make test` installs them: without them the oracle tests fail (one line), never skip
    missing("oracle", e, how=f"the mmdet {MMDET_VERSION} / mmseg {MMSEG_VERSION} oracle is needed: run `make setup`")
INSTALLED = {"mmcv": mmcv.__version__, "mmdet": mmdet.__version__, "mmseg": mmseg.__version__}  # what runs as oracle

import pvtv2  # noqa: E402
from pvtv2.detection.interop.mmdet import COCO_CLASSES  # noqa: E402

mmcv.utils.get_logger("mmcv").setLevel(logging.WARNING)  # init_weights logs every parameter's initialiser
from pvtv2.weights import convert  # noqa: E402

assert tuple(CocoDataset.CLASSES) == COCO_CLASSES


# --- our backbone inside mmdet / mmseg ----------------------------------------------------------------------------
class PVTOracle(nn.Module):
    """A registered pvtv2 model without its head, returning its four stage maps ``(B, C_i, H/s_i, W/s_i)`` as the
    authors' ``detection/pvt_v2.py`` backbones do (``type="PVTOracle", name="pvt_v2_b0", overrides={...}``)."""

    def __init__(self, name: str = "pvt_v2_b0", overrides: dict[str, Any] | None = None, **_: Any) -> None:
        super().__init__()
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in (overrides or {}).items()}
        self.model = pvtv2.create_model(name, num_classes=0, **cfg)

    def init_weights(self, pretrained: Any = None) -> None:
        """The model initialises itself; mmdet's ``pretrained`` is not used (no downloads in tests)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(f.contiguous() for f in self.model.forward_features(x))


for _registry in {id(MMDET_BACKBONES): MMDET_BACKBONES, id(MMSEG_BACKBONES): MMSEG_BACKBONES}.values():
    if "PVTOracle" not in _registry.module_dict:
        _registry.register_module(module=PVTOracle)


def oracle_backbone(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``backbone=`` entry of a test config: our ``name`` with :class:`pvtv2.PVTConfig` overrides."""
    return {"type": "PVTOracle", "name": name, "overrides": dict(overrides or {})}


def stage_channels(name: str, overrides: dict[str, Any] | None = None) -> list[int]:
    """Channels of the four stage maps of a registered model (the FPN's ``in_channels``)."""
    cfg = pvtv2.model_info(name).cfg.replace(**{k: tuple(v) if isinstance(v, list) else v
                                                  for k, v in (overrides or {}).items()})
    return list(cfg.embed_dims)


# --- the released configs, as dicts ------------------------------------------------------------------------------
IMG_NORM = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "to_rgb": True}


def detection_pipeline(img_scale: tuple[int, int] = (1333, 800)) -> list[dict[str, Any]]:
    """mmdet's ``_base_/datasets/coco_detection.py`` test pipeline (``img_scale`` = (long, short) edge limits)."""
    return [
        {"type": "LoadImageFromWebcam"},
        {"type": "MultiScaleFlipAug", "img_scale": img_scale, "flip": False, "transforms": [
            {"type": "Resize", "keep_ratio": True},
            {"type": "RandomFlip"},
            {"type": "Normalize", **IMG_NORM},
            {"type": "Pad", "size_divisor": 32},
            {"type": "ImageToTensor", "keys": ["img"]},
            {"type": "Collect", "keys": ["img"]},
        ]},
    ]


def delta_coder(stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> dict[str, Any]:
    return {"type": "DeltaXYWHBBoxCoder", "target_means": [0.0] * 4, "target_stds": list(stds)}


def fpn_neck(in_channels: Sequence[int], **kw: Any) -> dict[str, Any]:
    """mmdet's ``FPN`` with 256 channels and 5 outputs (RetinaNet adds ``start_level=1, add_extra_convs='on_input'``)."""
    return {"type": "FPN", "in_channels": list(in_channels), "out_channels": 256, "num_outs": 5, **kw}


def retinanet_config(backbone: dict[str, Any], in_channels: Sequence[int], num_classes: int = 80) -> dict[str, Any]:
    """``retinanet_pvt_v2_*_fpn_1x_coco.py``: mmdet's ``_base_/models/retinanet_r50_fpn.py`` with the PVT backbone and
    the FPN on stages 2-4 (``start_level=1``) plus P6/P7 from C5 (``add_extra_convs='on_input'``)."""
    return {"model": {
        "type": "RetinaNet",
        "backbone": backbone,
        "neck": fpn_neck(in_channels, start_level=1, add_extra_convs="on_input"),
        "bbox_head": {
            "type": "RetinaHead", "num_classes": num_classes, "in_channels": 256, "stacked_convs": 4,
            "feat_channels": 256,
            "anchor_generator": {"type": "AnchorGenerator", "octave_base_scale": 4, "scales_per_octave": 3,
                                 "ratios": [0.5, 1.0, 2.0], "strides": [8, 16, 32, 64, 128]},
            "bbox_coder": delta_coder(),
            "loss_cls": {"type": "FocalLoss", "use_sigmoid": True, "gamma": 2.0, "alpha": 0.25, "loss_weight": 1.0},
            "loss_bbox": {"type": "L1Loss", "loss_weight": 1.0},
        },
        "train_cfg": {"assigner": {"type": "MaxIoUAssigner", "pos_iou_thr": 0.5, "neg_iou_thr": 0.4,
                                   "min_pos_iou": 0, "ignore_iof_thr": -1},
                      "allowed_border": -1, "pos_weight": -1, "debug": False},
        "test_cfg": {"nms_pre": 1000, "min_bbox_size": 0, "score_thr": 0.05,
                     "nms": {"type": "nms", "iou_threshold": 0.5}, "max_per_img": 100},
    }, "data": {"test": {"pipeline": detection_pipeline()}}}


def mask_rcnn_config(backbone: dict[str, Any], in_channels: Sequence[int], num_classes: int = 80) -> dict[str, Any]:
    """``mask_rcnn_pvt_v2_*_fpn_1x_coco.py``: mmdet's ``_base_/models/mask_rcnn_r50_fpn.py`` with the PVT backbone and
    the FPN on all four stages plus a max-pooled P6."""
    def roi_extractor(size: int) -> dict[str, Any]:
        return {"type": "SingleRoIExtractor", "out_channels": 256, "featmap_strides": [4, 8, 16, 32],
                "roi_layer": {"type": "RoIAlign", "output_size": size, "sampling_ratio": 0}}

    def assigner(pos: float, neg: float, min_pos: float) -> dict[str, Any]:
        return {"type": "MaxIoUAssigner", "pos_iou_thr": pos, "neg_iou_thr": neg, "min_pos_iou": min_pos,
                "match_low_quality": True, "ignore_iof_thr": -1}

    def sampler(num: int, pos_fraction: float, add_gt: bool) -> dict[str, Any]:
        return {"type": "RandomSampler", "num": num, "pos_fraction": pos_fraction, "neg_pos_ub": -1,
                "add_gt_as_proposals": add_gt}

    def rpn_nms(nms_pre: int) -> dict[str, Any]:
        return {"nms_pre": nms_pre, "max_per_img": 1000, "nms": {"type": "nms", "iou_threshold": 0.7},
                "min_bbox_size": 0}

    return {"model": {
        "type": "MaskRCNN",
        "backbone": backbone,
        "neck": fpn_neck(in_channels),
        "rpn_head": {
            "type": "RPNHead", "in_channels": 256, "feat_channels": 256,
            "anchor_generator": {"type": "AnchorGenerator", "scales": [8], "ratios": [0.5, 1.0, 2.0],
                                 "strides": [4, 8, 16, 32, 64]},
            "bbox_coder": delta_coder(),
            "loss_cls": {"type": "CrossEntropyLoss", "use_sigmoid": True, "loss_weight": 1.0},
            "loss_bbox": {"type": "L1Loss", "loss_weight": 1.0},
        },
        "roi_head": {
            "type": "StandardRoIHead",
            "bbox_roi_extractor": roi_extractor(7),
            "bbox_head": {
                "type": "Shared2FCBBoxHead", "in_channels": 256, "fc_out_channels": 1024, "roi_feat_size": 7,
                "num_classes": num_classes, "bbox_coder": delta_coder((0.1, 0.1, 0.2, 0.2)),
                "reg_class_agnostic": False,
                "loss_cls": {"type": "CrossEntropyLoss", "use_sigmoid": False, "loss_weight": 1.0},
                "loss_bbox": {"type": "L1Loss", "loss_weight": 1.0},
            },
            "mask_roi_extractor": roi_extractor(14),
            "mask_head": {"type": "FCNMaskHead", "num_convs": 4, "in_channels": 256, "conv_out_channels": 256,
                          "num_classes": num_classes,
                          "loss_mask": {"type": "CrossEntropyLoss", "use_mask": True, "loss_weight": 1.0}},
        },
        "train_cfg": {
            "rpn": {"assigner": assigner(0.7, 0.3, 0.3), "sampler": sampler(256, 0.5, False), "allowed_border": -1,
                    "pos_weight": -1, "debug": False},
            "rpn_proposal": rpn_nms(2000),
            "rcnn": {"assigner": assigner(0.5, 0.5, 0.5), "sampler": sampler(512, 0.25, True), "mask_size": 28,
                     "pos_weight": -1, "debug": False},
        },
        "test_cfg": {
            "rpn": rpn_nms(1000),
            "rcnn": {"score_thr": 0.05, "nms": {"type": "nms", "iou_threshold": 0.5}, "max_per_img": 100,
                     "mask_thr_binary": 0.5},
        },
    }, "data": {"test": {"pipeline": detection_pipeline()}}}


def semantic_fpn_config(backbone: dict[str, Any], in_channels: Sequence[int], num_classes: int = 150) -> dict[str, Any]:
    """``fpn_pvtv2_*_ade20k_40k.py`` (whai362/PVTv2-Seg): mmseg's ``_base_/models/fpn_r50.py`` with the PVT backbone,
    150 ADE20K classes, ``BN`` in place of ``SyncBN`` (one process, no distributed group on CPU)."""
    norm = {"type": "BN", "requires_grad": True}
    return {"model": {
        "type": "EncoderDecoder",
        "backbone": backbone,
        "neck": {"type": "FPN", "in_channels": list(in_channels), "out_channels": 256, "num_outs": 4},
        "decode_head": {"type": "FPNHead", "in_channels": [256] * 4, "in_index": [0, 1, 2, 3],
                        "feature_strides": [4, 8, 16, 32], "channels": 128, "dropout_ratio": 0.1,
                        "num_classes": num_classes, "norm_cfg": norm, "align_corners": False,
                        "loss_decode": {"type": "CrossEntropyLoss", "use_sigmoid": False, "loss_weight": 1.0}},
        "train_cfg": {},
        "test_cfg": {"mode": "whole"},
    }}


def with_backbone(cfg: dict[str, Any], backbone: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``cfg`` with another backbone entry (e.g. the released ``{"type": "pvt_v2_b0", "style":
    "pytorch"}`` for the config text saved in a checkpoint's meta)."""
    out = copy.deepcopy(cfg)
    out["model"]["backbone"] = backbone
    return out


def released_backbone(name: str) -> dict[str, Any]:
    """The backbone entry of the authors' configs (their ``detection/pvt_v2.py`` classes are named by variant)."""
    return {"type": name, "style": "pytorch"}


# --- building, seeding, running ----------------------------------------------------------------------------------
def build_mmdet(cfg: dict[str, Any], *, seed: int = 0, noise: float = 0.0) -> nn.Module:
    """An mmdet detector from a config dict, initialised by mmdet under ``seed`` (then :func:`seed_weights` with
    ``noise``), in eval mode, with ``model.cfg`` set for ``inference_detector``."""
    from mmdet.models import build_detector

    return _build(build_detector, cfg, seed, noise)


def build_mmseg(cfg: dict[str, Any], *, seed: int = 0, noise: float = 0.0) -> nn.Module:
    """An mmseg segmentor from a config dict (as :func:`build_mmdet`)."""
    from mmseg.models import build_segmentor

    return _build(build_segmentor, cfg, seed, noise)


def _build(builder: Any, cfg: dict[str, Any], seed: int, noise: float) -> nn.Module:
    config = Config(copy.deepcopy(cfg))
    torch.manual_seed(seed)
    model = builder(config.model)
    model.init_weights()
    if noise:
        seed_weights(model, seed=seed, noise=noise)
    model.cfg = config
    return model.eval()


@torch.no_grad()
def seed_weights(model: nn.Module, *, seed: int = 0, noise: float = 0.02) -> nn.Module:
    """Add seeded Gaussian noise (std ``noise``) to every floating parameter and BatchNorm statistic, so that random
    heads give varied, non-degenerate outputs (running variances stay positive)."""
    gen = torch.Generator().manual_seed(seed)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not t.is_floating_point():
            continue
        delta = torch.randn(t.shape, generator=gen) * noise
        t.add_(delta.abs() if name.endswith("running_var") else delta)
    return model


def mmdet_state_dict(model: nn.Module, *, backbone_layout: str = "official") -> dict[str, torch.Tensor]:
    """The detector's (segmentor's) state dict with the backbone under the names of a released file:
    ``official`` = the authors' ``pvt_v2.py`` (``backbone.patch_embed1.proj.weight``, ``backbone.block1.0...``),
    ``mmdet`` = mmdet's own ``PyramidVisionTransformerV2`` (``backbone.layers.0.0.projection.weight``...)."""
    sd = {k: v.detach() if v.is_meta else v.detach().cpu() for k, v in model.state_dict().items()}
    return released_layout(sd, backbone_layout=backbone_layout)


def released_layout(sd: dict[str, torch.Tensor], *, backbone_layout: str = "official") -> dict[str, torch.Tensor]:
    """Tensors named as in the oracle's modules (``backbone.model.*`` = our PVT inside ``PVTOracle``) renamed as in a
    released file (see :func:`mmdet_state_dict`); also for gradients."""
    ours = {k[len("backbone.model."):]: v for k, v in sd.items() if k.startswith("backbone.model.")}
    rest = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    released = convert(ours, "pvtv2", backbone_layout)
    return {**{f"backbone.{k}": v for k, v in released.items()}, **rest}


def save_mmdet_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    config: dict[str, Any] | None,
    classes: Sequence[str] | None = COCO_CLASSES,
    backbone_layout: str = "official",
    version: str = f"mmdet_version={MMDET_VERSION}",
) -> Path:
    """Write ``model`` as mmcv's ``save_checkpoint`` under mmdet's (mmseg's) checkpoint hook does:
    ``{"meta": {<version>, "config": Config.pretty_text, "CLASSES", "epoch", "iter", "mmcv_version", "time"},
    "state_dict": ...}``. ``config``: the config dict whose text goes into meta (None: no config in meta);
    ``version``: ``"mmdet_version=..."`` or ``"mmseg_version=..."``."""
    key, value = version.split("=")
    meta: dict[str, Any] = {key: value, "epoch": 12, "iter": 87960, "mmcv_version": mmcv.__version__,
                            "time": time.asctime()}
    if config is not None:
        meta["config"] = Config(copy.deepcopy(config)).pretty_text
    if classes is not None:
        meta["CLASSES"] = tuple(classes)
    path = Path(path)
    torch.save({"meta": meta, "state_dict": mmdet_state_dict(model, backbone_layout=backbone_layout)}, path)
    return path


def to_bgr(image: np.ndarray) -> np.ndarray:
    """An RGB ``(H, W, 3)`` uint8 photo as the BGR array mmdet's ``LoadImageFromWebcam`` expects."""
    return np.ascontiguousarray(image[..., ::-1])


@torch.no_grad()
def mmdet_detect(model: nn.Module, image: np.ndarray, *, img_scale: tuple[int, int] | None = None
                 ) -> dict[str, torch.Tensor]:
    """``inference_detector`` on an RGB uint8 photo, flattened to our output format: ``boxes`` (N, 4), ``scores``
    (N,), ``labels`` (N,) = mmdet's class index + 1, ``masks`` (N, H, W) bool when the detector has a mask head;
    sorted by decreasing score. ``img_scale``: the test resize (``None``: the photo's own size, no resizing)."""
    from mmdet.apis import inference_detector

    h, w = image.shape[:2]
    model.cfg.data.test = mmcv.ConfigDict({"pipeline": detection_pipeline(img_scale or (max(h, w), min(h, w)))})
    result = inference_detector(model, to_bgr(image))
    bbox_result, segm_result = result if isinstance(result, tuple) else (result, None)
    labels = np.concatenate([np.full(len(b), c + 1) for c, b in enumerate(bbox_result)])
    dets = np.concatenate(bbox_result)
    out = {"boxes": torch.from_numpy(dets[:, :4]).float(), "scores": torch.from_numpy(dets[:, 4]).float(),
           "labels": torch.from_numpy(labels).long()}
    if segm_result is not None:
        masks = [m for per_class in segm_result for m in per_class]
        out["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w, dtype=torch.bool)
    order = sort_detections(out)
    return {k: v[order] for k, v in out.items()}


def sort_detections(det: dict[str, torch.Tensor]) -> torch.Tensor:
    """Indices ordering detections by decreasing score, then label (a stable order to compare two detectors)."""
    scores, labels = det["scores"].double(), det["labels"].double()
    key = scores * 1e4 - labels * 1e-9  # labels break exact ties only
    return torch.argsort(key, descending=True, stable=True)


def preprocess(image: np.ndarray, size_divisor: int = 32) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """An RGB uint8 photo as mmdet's test pipeline hands it to the model at scale 1: normalised ``(1, 3, H', W')``
    padded with zeros to a multiple of ``size_divisor``, and its ``img_metas``."""
    import mmcv

    h, w = image.shape[:2]
    # mmdet's Normalize: mmcv.imnormalize (OpenCV subtract / multiply by the float64 reciprocal of std) on the photo
    # already in RGB order, so to_rgb=False here
    x = torch.from_numpy(mmcv.imnormalize(image, np.array(IMG_NORM["mean"]), np.array(IMG_NORM["std"]),
                                          to_rgb=False)).permute(2, 0, 1)  # (3, H, W) float32
    ph, pw = -(-h // size_divisor) * size_divisor, -(-w // size_divisor) * size_divisor
    padded = x.new_zeros(3, ph, pw)
    padded[:, :h, :w] = x
    meta = {"img_shape": (h, w, 3), "ori_shape": (h, w, 3), "pad_shape": (ph, pw, 3), "batch_input_shape": (ph, pw),
            "scale_factor": np.ones(4, dtype=np.float32), "flip": False, "flip_direction": None}
    return padded[None], [meta]


def preprocess_batch(images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Several photos as mmdet's test pipeline and collate hand them over at scale 1: each normalised and padded to a
    multiple of 32 (its ``pad_shape``), then all zero-padded to the largest (``batch_input_shape``)."""
    parts = [preprocess(im) for im in images]
    h, w = max(x.shape[-2] for x, _ in parts), max(x.shape[-1] for x, _ in parts)
    batch = parts[0][0].new_zeros(len(parts), 3, h, w)
    metas = []
    for i, (x, (meta,)) in enumerate(parts):
        batch[i, :, : x.shape[-2], : x.shape[-1]] = x[0]
        metas.append({**meta, "batch_input_shape": (h, w)})
    return batch, metas


@torch.no_grad()
def mmdet_detect_batch(model: nn.Module, images: Sequence[np.ndarray]) -> list[dict[str, torch.Tensor]]:
    """mmdet's ``simple_test`` on one padded batch of photos at scale 1 (:func:`preprocess_batch`), each image's
    result flattened and sorted as :func:`mmdet_detect`'s."""
    x, metas = preprocess_batch(images)
    out = []
    for result, image in zip(model.eval().simple_test(x, metas, rescale=True), images):
        bbox_result, segm_result = result if isinstance(result, tuple) else (result, None)
        dets = np.concatenate(bbox_result)
        det = {"boxes": torch.from_numpy(dets[:, :4]).float(), "scores": torch.from_numpy(dets[:, 4]).float(),
               "labels": torch.from_numpy(np.concatenate([np.full(len(b), c + 1) for c, b in enumerate(bbox_result)])
                                          ).long()}
        if segm_result is not None:
            masks = [m for per_class in segm_result for m in per_class]
            det["masks"] = torch.from_numpy(np.stack(masks)) if masks else \
                torch.zeros(0, *image.shape[:2], dtype=torch.bool)
        order = sort_detections(det)
        out.append({k: v[order] for k, v in det.items()})
    return out


def our_detect_batch(model: nn.Module, images: Sequence[np.ndarray]) -> list[dict[str, torch.Tensor]]:
    """Our detector on the same photos in one call (one padded batch, each at its own size), as
    :func:`our_detect` sorts and binarises."""
    model.transform.keep_size = True
    try:
        with torch.no_grad():
            outs = model.eval()([torch.tensor(im).permute(2, 0, 1).float() / 255 for im in images])
    finally:
        model.transform.keep_size = False
    for out in outs:
        if "masks" in out:
            out["masks"] = out["masks"][:, 0] >= 0.5
    return [{k: v[sort_detections(out)] for k, v in out.items()} for out in outs]


def forward_train(model: nn.Module, images: torch.Tensor, metas: list[dict[str, Any]],
                  targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """mmdet's training losses for a padded batch and our targets (``boxes`` XYXY pixels, ``labels`` 1..K,
    optional ``masks`` (N, H, W) uint8 at the image size), summed over FPN levels: ``{name: scalar}``."""
    from mmdet.core import BitmapMasks

    model.train()
    kwargs: dict[str, Any] = {
        "gt_bboxes": [t["boxes"].float() for t in targets],
        "gt_labels": [t["labels"] - 1 for t in targets],
    }
    if "masks" in targets[0]:
        ph, pw = images.shape[-2:]
        kwargs["gt_masks"] = [BitmapMasks(_pad(t["masks"].numpy(), ph, pw), ph, pw) for t in targets]
    losses = model.forward_train(images, metas, **kwargs)
    model.eval()
    out = {}
    for name, value in losses.items():
        if "loss" in name:
            out[name] = sum(value) if isinstance(value, (list, tuple)) else value
    return out


def train_losses(theirs: nn.Module, ours: nn.Module, images: Sequence[np.ndarray],
                 targets: list[dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """mmdet's (:func:`forward_train`) and our detector's training losses on the same photos (all padding to one
    size) and targets; ours sees the photos unresized, as the trainer's data pipeline hands them over."""
    x, metas = preprocess_batch(images)
    expected = forward_train(theirs, x, metas, targets)
    ours.train()
    ours.transform._skip_resize = True
    try:
        got = ours([torch.tensor(im).permute(2, 0, 1).float() / 255 for im in images], targets)
    finally:
        ours.transform._skip_resize = False
        ours.eval()
    return expected, got


def _pad(masks: np.ndarray, h: int, w: int) -> np.ndarray:
    out = np.zeros((len(masks), h, w), dtype=np.uint8)
    out[:, : masks.shape[1], : masks.shape[2]] = masks
    return out


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def photo(name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """A scikit-image sample photo (``astronaut``, ``coffee``, ``chelsea``...) as RGB uint8, optionally resized to
    ``size`` = (H, W) with PIL's bilinear filter."""
    import skimage.data
    from PIL import Image

    image = getattr(skimage.data, name)()
    if size is not None:
        image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
    return np.ascontiguousarray(image)


def our_detect(model: nn.Module, image: np.ndarray, *, test_scale: bool = False) -> dict[str, torch.Tensor]:
    """Our detector on an RGB uint8 photo at its own size (no resizing, as :func:`mmdet_detect` without
    ``img_scale``; ``test_scale``: resized by the model's own test settings instead), sorted as
    :func:`sort_detections`; masks binarised at 0.5 as mmdet's ``mask_thr_binary``."""
    h, w = image.shape[:2]
    sizes = model.transform.min_size, model.transform.max_size
    if not test_scale:
        model.transform.min_size, model.transform.max_size = (min(h, w),), max(h, w)
    try:
        with torch.no_grad():
            out = model.eval()([torch.tensor(image).permute(2, 0, 1).float() / 255])[0]
    finally:
        model.transform.min_size, model.transform.max_size = sizes
    if "masks" in out:
        out["masks"] = out["masks"][:, 0] >= 0.5
    order = sort_detections(out)
    return {k: v[order] for k, v in out.items()}


def assert_same_detections(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], *, box_tol: float = 1e-2,
                           score_tol: float = 1e-4, mask_tol: float = 1e-3) -> None:
    """Every detection of ``theirs`` has one of ``ours`` with the same label, a score within ``score_tol`` and box
    corners within ``box_tol`` pixels (matched greedily by decreasing score), and both have the same number. Masks:
    at most a ``mask_tol`` fraction of the instance pixels differ (pixels at exactly the 0.5 threshold)."""
    assert len(theirs["scores"]) > 0, "the oracle detected nothing: lower its score threshold"
    assert len(ours["scores"]) == len(theirs["scores"]), (len(ours["scores"]), len(theirs["scores"]))
    free = torch.ones(len(ours["scores"]), dtype=torch.bool)
    for i in range(len(theirs["scores"])):
        close = free & (ours["labels"] == theirs["labels"][i]) \
            & ((ours["scores"] - theirs["scores"][i]).abs() <= score_tol) \
            & ((ours["boxes"] - theirs["boxes"][i]).abs().amax(dim=1) <= box_tol)
        assert close.any(), f"no match for detection {i}: {theirs['labels'][i].item()} {theirs['scores'][i].item():.5f} " \
            f"{theirs['boxes'][i].tolist()}"
        j = int(torch.where(close)[0][0])
        free[j] = False
        if "masks" in theirs:
            differ = (ours["masks"][j] != theirs["masks"][i]).sum().item()
            assert differ <= mask_tol * max(int(theirs["masks"][i].sum()), 1) + 2, (i, differ)


def level_outputs(maps: Sequence[torch.Tensor], channels: int) -> torch.Tensor:
    """mmdet's per-level head maps ``(B, A * C, h, w)`` in torchvision's layout ``(B, sum h * w * A, C)``."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(len(m), -1, channels) for m in maps], dim=1)


# --- training trajectories -------------------------------------------------------------------------------------------
def mmcv_lr_driver(hook: Any, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int) -> Any:
    """A function ``set_lr(i)`` that makes mmcv's LR hook set ``optimizer``'s learning rates for iteration ``i`` as
    its ``EpochBasedRunner`` would (``before_run`` once, ``before_train_epoch`` at each epoch start,
    ``before_train_iter`` at every iteration)."""
    runner = types.SimpleNamespace(optimizer=optimizer, epoch=0, iter=0, max_epochs=epochs,
                                   max_iters=epochs * steps_per_epoch, data_loader=range(steps_per_epoch))
    hook.before_run(runner)
    started: list[int] = []  # the epoch whose start the hook has seen

    def set_lr(i: int) -> None:
        runner.epoch, runner.iter = i // steps_per_epoch, i
        if started[-1:] != [runner.epoch]:  # an epoch starts (or the first iteration asked for lies in it)
            hook.before_train_epoch(runner)
            started.append(runner.epoch)
        hook.before_train_iter(runner)

    return set_lr


def teacher_forced_trajectory(theirs: nn.Module, ours: nn.Module, convert: Any, their_opt: torch.optim.Optimizer,
                              our_opt: torch.optim.Optimizer, batches: Sequence[Any],
                              *, their_lr: Any = None, our_schedule: Any = None, losses_of: Any = None
                              ) -> dict[str, Any]:
    """mmdet's detector trained by its optimizer over ``batches`` (``(photos, targets)`` each by default); before
    every step ours is put on mmdet's current weights (``convert``: a ``from_mmdet``) and must give the same losses and gradients, and
    our optimizer, stepping on mmdet's gradients, the same new weights. ``their_lr(i)`` / ``our_schedule`` (stepped
    after each step) set each side's learning rates. Returns the per-step losses ``(theirs, ours)``, learning rates
    (the set of group lrs per side), the largest relative gradient-tensor difference (and its name), the median
    gradient-tensor difference of each step, and the largest relative weight-tensor difference after a step.
    ``losses_of(theirs, ours, batch) -> (their losses, our losses)`` (dicts of scalars) replaces :func:`train_losses`
    (a segmentor's, say)."""
    params = dict(ours.named_parameters())

    def as_ours(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return convert(released_layout(tensors), ours)

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a - b).norm() / b.norm().clamp(min=1e-12)).item()

    out: dict[str, Any] = {"losses": [], "lrs": [], "worst_grad": (0.0, ""), "medians": [], "worst_weight": 0.0}
    losses_of = losses_of or (lambda theirs, ours, batch: train_losses(theirs, ours, *batch))
    for i, batch in enumerate(batches):
        if their_lr is not None:
            their_lr(i)
        out["lrs"].append(({g["lr"] for g in their_opt.param_groups}, {g["lr"] for g in our_opt.param_groups}))
        with torch.no_grad():
            for name, w in as_ours({k: p.detach() for k, p in theirs.named_parameters()}).items():
                params[name].copy_(w)
        expected, got = losses_of(theirs, ours, batch)
        for opt, losses in ((their_opt, expected), (our_opt, got)):
            opt.zero_grad()
            sum(losses.values()).backward()
        out["losses"].append((sum(expected.values()).item(), sum(got.values()).item()))
        their_grads = as_ours({k: p.grad for k, p in theirs.named_parameters() if p.grad is not None})
        assert len(their_grads) == len(params) > 50, (len(their_grads), len(params))
        errors = sorted((rel(params[n].grad, g), n) for n, g in their_grads.items())
        out["worst_grad"] = max(out["worst_grad"], errors[-1])
        out["medians"].append(errors[len(errors) // 2][0])
        for name, g in their_grads.items():  # our optimizer steps on mmdet's gradients
            params[name].grad = g.clone()
        their_opt.step()
        our_opt.step()
        if our_schedule is not None:
            our_schedule.step()
        after = as_ours({k: p.detach() for k, p in theirs.named_parameters()})
        out["worst_weight"] = max(out["worst_weight"], max(rel(params[n].detach(), w) for n, w in after.items()))
    out["worst_loss"] = max(abs(o - t) / t for t, o in out["losses"])
    return out


def fast_forward(schedule: Any, step: int) -> Any:
    """Our :class:`~pvtv2.engine.optim.LRSchedule` put at ``step`` (its optimizer's groups at that step's lrs), as if
    ``step`` optimizer steps had been taken."""
    schedule.last_epoch = step
    for group, base in zip(schedule.optimizer.param_groups, schedule.base_lrs, strict=True):
        group["lr"] = base * schedule.factor(step)
    return schedule


def multiscale_batches(count: int, *, sides: Sequence[int] = (128, 160, 192), seed: int = 0
                       ) -> list[tuple[list[np.ndarray], list[dict[str, torch.Tensor]]]]:
    """``count`` training batches of two photos in the manner of a multi-scale recipe, the same on every call: each
    batch at one of ``sides`` (shorter side; the second photo a little smaller, so both pad to the same multiple of
    32), every other batch flipped left-right with its boxes; 1-3 seeded boxes per photo, labels 1..80."""
    gen = np.random.default_rng(seed)
    names = ["astronaut", "chelsea", "coffee"]
    batches = []
    for i in range(count):
        h = sides[i % len(sides)]
        w = h * 3 // 2
        images, targets = [], []
        for j, (hh, ww) in enumerate(((h, w), (h - 12, w - 20))):
            image = photo(names[(i + j) % len(names)], (hh, ww))
            n = int(gen.integers(1, 4))
            x1, y1 = gen.uniform(0, 0.6, n) * ww, gen.uniform(0, 0.6, n) * hh
            bw, bh = gen.uniform(0.1, 0.4, n) * ww, gen.uniform(0.1, 0.4, n) * hh
            boxes = torch.tensor(np.stack([x1, y1, x1 + bw, y1 + bh], 1), dtype=torch.float32)  # (n, 4)
            if i % 2:
                image = np.ascontiguousarray(image[:, ::-1])
                boxes = torch.stack([ww - boxes[:, 2], boxes[:, 1], ww - boxes[:, 0], boxes[:, 3]], 1)
            images.append(image)
            targets.append({"boxes": boxes, "labels": torch.tensor(gen.integers(1, 81, n))})
        batches.append((images, targets))
    return batches
