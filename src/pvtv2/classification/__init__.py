"""Image classification with PVT models: recipes, data, the training task, evaluation and prediction.

>>> from pvtv2.classification import ClassificationTask, get_recipe
>>> from pvtv2.engine import train
>>> train(ClassificationTask(get_recipe("fashion_mnist")))      # what `pvtv2 train` runs

- :mod:`.recipes`: :class:`ClassificationConfig` and the named recipes (``fashion_mnist``, ``imagenet``).
- :mod:`.data`: the run's data; :mod:`.folder` (ImageFolder that survives bad files), :mod:`.tensor_loader`
  (in-memory batches built on the device), :mod:`.transforms` (timm's DeiT pipeline).
- :mod:`.task`: :class:`ClassificationTask` for :func:`pvtv2.engine.train`.
- :mod:`.evaluate`: top-1/top-5; :mod:`.inference`: checkpoints and released weights -> predictions.
"""

from .inference import Classifier, evaluate_folder, imagenet_classes, load_classifier, predict, save_visualisation
from .recipes import CLIP_GRAD, RECIPES, ClassificationConfig, get_recipe
from .task import ClassificationTask, build_model
from .transforms import AugmentConfig

__all__ = [
    "CLIP_GRAD",
    "RECIPES",
    "AugmentConfig",
    "ClassificationConfig",
    "ClassificationTask",
    "Classifier",
    "build_model",
    "evaluate_folder",
    "get_recipe",
    "imagenet_classes",
    "load_classifier",
    "predict",
    "save_visualisation",
]
