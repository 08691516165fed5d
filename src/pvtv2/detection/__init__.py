"""Object detection and instance segmentation with PVT backbones, on torchvision's maintained detectors.

>>> from pvtv2.detection import retinanet
>>> model = retinanet(backbone="pvt_v2_b0", num_classes=80, backbone_weights="pvt_v2_b0.pth")

- :mod:`.registry`: one :class:`DetectorSpec` per architecture (builder, learning rate, masks, dense outputs);
  :mod:`.detectors`: one thin module per detector (RetinaNet, Mask R-CNN, FCOS, ATSS, GFL, Cascade Mask R-CNN,
  Sparse R-CNN) assembling parts and registering itself.
- :mod:`.modeling`: the parts: ``necks`` (FPN on the backbone adapter :mod:`pvtv2.models.backbone`), ``anchors``,
  ``boxes`` (coder, NMS), ``assigners`` (max-IoU, ATSS, Hungarian; random sampler), ``dense_heads`` (the ATSS/GFL
  frame, towers, the foreground-label mixin), ``proposal`` (the RPNs), ``roi_heads`` (RoI pooling, Mask R-CNN,
  cascade, Sparse R-CNN), ``losses``, ``transform``.
- :mod:`.data`: COCO JSON / VOC XML annotations, checked once (``annotations``); tv_tensors samples (``dataset``, no
  models); the released multi-scale + crop augmentation (``augment``).
- :mod:`.recipes`: :class:`DetectionConfig`, the ``1x``, ``3x`` and ``3x_mstrain`` recipes and their transforms v2
  pipelines.
- :mod:`.evaluation`: COCO AP through pycocotools (``coco_eval``), params and GFLOPs at 1280x800 beside the paper's
  Tables 3 and 6 (``complexity``), Table 4 (``table4``).
- :mod:`.interop`: mmdet 2.x checkpoints (``mmdet``), the ONNX export spec (``export``).
- :mod:`.task`: :class:`DetectionTask` for :func:`pvtv2.engine.train`; :mod:`.inference`: checkpoints -> detectors
  -> images; :mod:`.visualize`: drawn detections; :mod:`.compare`: the detectors side by side.
"""

from .data.annotations import DetectionData, load_coco, load_voc, open_dataset
from .data.dataset import DetectionDataset
from .detectors import atss, fcos, gfl, mask_rcnn, retinanet
from .evaluation.coco_eval import evaluate
from .evaluation.complexity import complexity_rows
from .inference import detect, load_detector
from .modeling.necks.fpn import PVTWithFPN, pvt_fpn
from .recipes import RECIPES, DetectionConfig, get_recipe
from .registry import DETECTORS, DetectorSpec, build_detector, get_detector, register
from .task import DetectionTask

__all__ = [
    "DETECTORS",
    "DetectionConfig",
    "DetectionData",
    "DetectionDataset",
    "DetectionTask",
    "DetectorSpec",
    "PVTWithFPN",
    "RECIPES",
    "atss",
    "build_detector",
    "complexity_rows",
    "detect",
    "evaluate",
    "fcos",
    "get_detector",
    "gfl",
    "get_recipe",
    "load_coco",
    "load_detector",
    "load_voc",
    "mask_rcnn",
    "open_dataset",
    "pvt_fpn",
    "register",
    "retinanet",
]
