"""Other tools' formats: mmdet checkpoints (:mod:`.mmdet`), the ONNX export spec (:mod:`.export`).
"""
