"""Object detection and instance segmentation with PVT backbones, on torchvision's maintained detectors.

>>> from pvtv2.detection import retinanet
>>> model = retinanet(backbone="pvt_v2_b0", num_classes=80, backbone_weights="pvt_v2_b0.pth")

- :mod:`.registry`: one :class:`DetectorSpec` per architecture (builder, learning rate, masks, dense outputs);
  :mod:`.detectors`: one module per detector (RetinaNet, Mask R-CNN, FCOS, ATSS, GFL), each registering itself.
- :mod:`.fpn`: the FPN on the backbone adapter (:mod:`pvtv2.models.backbone`); :mod:`.anchors`, :mod:`.labels`.
- ATSS / GFL pieces: :mod:`.one_stage` (the shared frame), :mod:`.dense_heads`, :mod:`.assigners`, :mod:`.losses`,
  :func:`.one_stage.from_mmdet` (released mmdet weights).
- :mod:`.data`: COCO JSON / VOC XML annotations, checked once; :mod:`.dataset`: tv_tensors samples (no models).
- :mod:`.recipes`: :class:`DetectionConfig`, the ``1x``, ``3x`` and ``3x_mstrain`` recipes and their transforms v2
  pipelines (:mod:`.augment`: the released multi-scale + crop augmentation).
- :mod:`.evaluate`: COCO AP through pycocotools; :mod:`.visualize`: drawn detections.
- :mod:`.task`: :class:`DetectionTask` for :func:`pvtv2.engine.train`; :mod:`.inference`: checkpoints -> detectors
  -> images.
- :mod:`.complexity`: params and GFLOPs at 1280x800 beside the paper's Tables 3 and 6; :mod:`.table4`: Table 4.
"""

from .complexity import complexity_rows
from .data import DetectionData, load_coco, load_voc, open_dataset
from .dataset import DetectionDataset
from .evaluate import evaluate
from .inference import detect, load_detector
from .detectors import atss, fcos, gfl, mask_rcnn, retinanet
from .fpn import PVTWithFPN, pvt_fpn
from .registry import DETECTORS, DetectorSpec, build_detector, get_detector, register
from .recipes import RECIPES, DetectionConfig, get_recipe
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
