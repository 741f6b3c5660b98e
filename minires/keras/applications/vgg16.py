"""keras.applications.vgg16: the network(s) and Caffe-style ImageNet preprocessing."""
from ...applications import VGG16  # noqa: F401
from ...imagenet import decode_predictions, preprocess_input  # noqa: F401

__all__ = ["VGG16", "decode_predictions", "preprocess_input"]
