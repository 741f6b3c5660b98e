"""keras.applications.vgg16: the network(s) and Caffe-style ImageNet preprocessing."""
from ...applications import VGG16  # noqa: F401
from ...imagenet import decode_predictions, preprocess_input  # noqa: F401
from ..coverage import missing_from

__all__ = ["VGG16", "decode_predictions", "preprocess_input"]

__getattr__ = missing_from(__name__, __all__)
