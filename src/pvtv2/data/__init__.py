"""Data sources that any task reads: Fashion-MNIST's IDX files and robust image decoding.

Nothing here imports the models or a task: data code only produces arrays and tensors. Each task's loaders and
transforms live in its own package (:mod:`pvtv2.classification`, :mod:`pvtv2.detection`,
:mod:`pvtv2.segmentation`).
"""

from .fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from .fashion_mnist import TensorDataset, download_fashion_mnist, find_source, load_fashion_mnist, read_idx
from .images import BadImage, load_image, to_rgb

__all__ = [
    "FASHION_MNIST_CLASSES",
    "BadImage",
    "TensorDataset",
    "download_fashion_mnist",
    "find_source",
    "load_fashion_mnist",
    "load_image",
    "read_idx",
    "to_rgb",
]
