"""Weights in and out: every checkpoint format users hold, converted at the edge."""

from .formats import FORMATS, convert, detect_format
from .io import (
    LoadReport,
    head_classes,
    load_weights,
    read_checkpoint,
    released_state_dict,
    save_weights,
    unwrap_state_dict,
    weights_state_dict,
)

__all__ = [
    "FORMATS",
    "LoadReport",
    "convert",
    "detect_format",
    "head_classes",
    "load_weights",
    "read_checkpoint",
    "released_state_dict",
    "save_weights",
    "unwrap_state_dict",
    "weights_state_dict",
]
