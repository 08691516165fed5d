"""The PVT model family: configuration, the backbone class and the registry of variants."""

from .config import PVTConfig
from .pvt import PVTStage, PyramidVisionTransformer
from .registry import ModelInfo, create_model, list_models, model_info

__all__ = ["ModelInfo", "PVTConfig", "PVTStage", "PyramidVisionTransformer", "create_model", "list_models", "model_info"]
