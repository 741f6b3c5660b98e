"""keras.applications: whole networks with Keras's layer names, and each
family's ``preprocess_input`` / ``decode_predictions``."""
from ...applications import VGG16, VGG19, ResNet50, ResNet101, ResNet152  # noqa: F401
from . import resnet, resnet50, vgg16, vgg19  # noqa: F401
from ..coverage import missing_from

__all__ = ["ResNet50", "ResNet101", "ResNet152", "VGG16", "VGG19", "resnet", "resnet50", "vgg16", "vgg19"]

__getattr__ = missing_from(__name__, __all__)
