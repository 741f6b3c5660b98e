"""keras.applications.vgg19: the network(s) and Caffe-style ImageNet preprocessing."""
from ...applications import VGG19  # noqa: F401
from ...imagenet import decode_predictions, preprocess_input  # noqa: F401

__all__ = ["VGG19", "decode_predictions", "preprocess_input"]
