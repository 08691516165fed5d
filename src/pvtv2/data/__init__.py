"""Classification data: Fashion-MNIST in memory, ImageFolder with robust decoding, samplers and transforms.

Nothing here imports the models: data code only produces tensors.
"""

from .fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from .fashion_mnist import TensorDataset, download_fashion_mnist, find_source, load_fashion_mnist, read_idx
from .folder import ImageFolder, SeededDataset, collate_skip_bad
from .images import BadImage, load_image, to_rgb
from .samplers import EpochSampler, epoch_order, sample_seeds
from .tensor_loader import TensorLoader
from .transforms import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, eval_transform, mixup_fn, train_transform

__all__ = [
    "FASHION_MNIST_CLASSES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentConfig",
    "BadImage",
    "EpochSampler",
    "ImageFolder",
    "SeededDataset",
    "TensorDataset",
    "TensorLoader",
    "collate_skip_bad",
    "download_fashion_mnist",
    "epoch_order",
    "eval_transform",
    "find_source",
    "load_fashion_mnist",
    "load_image",
    "mixup_fn",
    "read_idx",
    "sample_seeds",
    "to_rgb",
    "train_transform",
]
