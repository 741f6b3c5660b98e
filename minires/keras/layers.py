"""keras.layers: every minires layer, the functional helpers, and ``Layer`` to subclass."""
from ..layers import (Activation, Add, Average, AveragePooling2D, BatchNormalization,  # noqa: F401
                      Concatenate, Conv2D, Conv2DTranspose, Dense, DepthwiseConv2D, Dropout,
                      Flatten, GlobalAveragePooling2D, SeparableConv2D,
                      GlobalMaxPooling2D, Input, InputLayer, LeakyReLU, Maximum, MaxPooling2D,
                      Minimum, Multiply, ReLU, Rescaling, Reshape, Softmax, UpSampling2D,
                      ZeroPadding2D, add, average, concatenate, maximum, minimum, multiply)
from ..models import Model
from .coverage import missing_from


class Layer(Model):
    """``keras.layers.Layer`` to subclass: ``__init__`` creates layers (and
    lists of them, and models), ``call(inputs, training=None)`` composes them.
    It is traced like a subclassed ``keras.Model`` (see minires.models): one
    node wherever it is called, weights in the order its attributes were set.

    Not supported: a ``call`` that computes with arrays itself (``inputs @
    self.w`` on weights from ``add_weight``) -- minires has no automatic
    differentiation; write such a layer as a ``minires.layers.Layer`` with a
    ``forward`` and ``backward`` of its own.
    """


__all__ = ["Activation", "Add", "Average", "AveragePooling2D", "BatchNormalization", "Concatenate",
           "Conv2D", "Conv2DTranspose", "Dense", "DepthwiseConv2D", "SeparableConv2D", "Dropout", "Flatten", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
           "Input", "InputLayer", "Layer", "LeakyReLU", "Maximum", "MaxPooling2D", "Minimum",
           "Multiply", "ReLU", "Rescaling", "Reshape", "Softmax", "UpSampling2D", "ZeroPadding2D",
           "add", "average", "concatenate", "maximum", "minimum", "multiply"]

__getattr__ = missing_from(__name__, __all__)
