"""Deployment exports: ONNX with dynamic batch, height and width, checked against PyTorch on the spot.

>>> from pvtv2.export import export_onnx, check_onnx
>>> path = export_onnx(model, "pvt_v2_b0.onnx")             # logits; backbone=True for the four stage maps
>>> report = check_onnx(path, model, sizes=[(224, 224), (200, 328)])
>>> report.max_abs_diff
"""

from .onnx import OnnxCheck, check_onnx, export_onnx, onnx_bytes, onnx_session
from .spec import ExportSpec, export_spec

__all__ = ["ExportSpec", "OnnxCheck", "check_onnx", "export_onnx", "export_spec", "onnx_bytes", "onnx_session"]
