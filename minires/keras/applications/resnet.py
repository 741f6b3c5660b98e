"""keras.applications.resnet: the network(s) and Caffe-style ImageNet preprocessing."""
from ...applications import ResNet50, ResNet101, ResNet152  # noqa: F401
from ...imagenet import decode_predictions, preprocess_input  # noqa: F401
from ..coverage import missing_from

__all__ = ["ResNet50", "ResNet101", "ResNet152", "decode_predictions", "preprocess_input"]

__getattr__ = missing_from(__name__, __all__)
