"""Semantic segmentation with Semantic FPN on the PVT backbone (paper Table 5).

>>> model = pvtv2.segmentation.semantic_fpn(backbone="pvt_v2_b0", num_classes=150)
>>> logits = model(torch.randn(1, 3, 512, 512))  # (1, 150, 512, 512)

Data (:mod:`.datasets`, :mod:`.layouts`, :mod:`.transforms`) never imports model code; :mod:`.recipes` holds
:class:`SegmentationConfig` and the released recipe, :mod:`.task` the :class:`SegmentationTask` that
:func:`pvtv2.engine.train` runs.
"""

from .checkpoint import load_segmentor, save_segmentor
from .classes import ADE20K_CLASSES, VOC_CLASSES, palette, palette_for
from .complexity import PAPER_TABLE5, complexity_rows
from .datasets import DatasetMeta, SegmentationDataset, collate_segmentation
from .layouts import ade20k, build_dataset, folder, voc
from .evaluate import evaluate, format_results
from .head import SemanticFPNHead
from .inference import predict, predict_logits
from .metrics import ConfusionMatrix
from .model import SemanticFPN, semantic_fpn
from .recipes import RECIPES, SegmentationConfig, get_recipe
from .task import SegmentationTask
from .transforms import train_transforms
from .visualize import overlay, save_visualization

__all__ = [
    "ADE20K_CLASSES",
    "PAPER_TABLE5",
    "RECIPES",
    "VOC_CLASSES",
    "ConfusionMatrix",
    "DatasetMeta",
    "SegmentationConfig",
    "SegmentationDataset",
    "SegmentationTask",
    "SemanticFPN",
    "SemanticFPNHead",
    "ade20k",
    "build_dataset",
    "collate_segmentation",
    "complexity_rows",
    "evaluate",
    "folder",
    "format_results",
    "get_recipe",
    "load_segmentor",
    "overlay",
    "palette",
    "palette_for",
    "predict",
    "predict_logits",
    "save_segmentor",
    "save_visualization",
    "semantic_fpn",
    "train_transforms",
    "voc",
]
