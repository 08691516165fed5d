"""One module per detector architecture; importing this package registers them all (:mod:`..registry`).

To add a detector: write ``<name>.py`` here with its builder (the shared keyword-only signature of
:mod:`pvtv2.detection.registry`) ending in ``register(DetectorSpec(...))``, and add its import below.
"""

from .atss import atss
from .fcos import fcos
from .gfl import gfl
from .mask_rcnn import mask_rcnn
from .retinanet import retinanet

__all__ = ["atss", "fcos", "gfl", "mask_rcnn", "retinanet"]
