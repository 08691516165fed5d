"""One module per detector architecture; importing this package registers them all (:mod:`..registry`).

To add a detector: write ``<name>.py`` here with its builder (the shared keyword-only signature of
:mod:`pvtv2.detection.registry`) ending in ``register(DetectorSpec(...))``, and add its import below.
"""

from .atss import atss
from .cascade_mask_rcnn import cascade_mask_rcnn
from .fcos import fcos
from .gfl import gfl
from .mask_rcnn import mask_rcnn
from .retinanet import retinanet
from .sparse_rcnn import sparse_rcnn

__all__ = ["atss", "cascade_mask_rcnn", "fcos", "gfl", "mask_rcnn", "retinanet", "sparse_rcnn"]
