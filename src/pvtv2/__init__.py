"""pvtv2: PVT v2 (Pyramid Vision Transformer v2) backbones and everything built on them.

>>> import pvtv2
>>> model = pvtv2.create_model("pvt_v2_b0", num_classes=10)
>>> feats = model.forward_features(torch.randn(1, 3, 224, 224))  # 4 maps, strides 4/8/16/32
"""

from .errors import CheckpointError, DataError, PVTError, TrainingError
from .models import ModelInfo, PVTConfig, PyramidVisionTransformer, create_model, list_models, model_info
from .weights import convert, detect_format, load_weights, save_weights

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DataError",
    "ModelInfo",
    "PVTConfig",
    "PVTError",
    "PyramidVisionTransformer",
    "TrainingError",
    "convert",
    "create_model",
    "detect_format",
    "list_models",
    "load_weights",
    "model_info",
    "save_weights",
]
