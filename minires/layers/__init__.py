"""Layers with Keras's names and arguments; each has forward and backward."""
from .activations import Activation, LeakyReLU, ReLU, Softmax
from .base import KerasTensor, Layer, clear_session
from .conv import Conv2D
from .conv_transpose import Conv2DTranspose
from .depthwise import DepthwiseConv2D, SeparableConv2D
from .core import Dense, Flatten, Rescaling, Reshape, UpSampling2D, ZeroPadding2D
from .input_layer import Input, InputLayer
from .merge import (Add, Average, Concatenate, Maximum, Minimum, Multiply, add, average, concatenate,
                    maximum, minimum, multiply)
from .normalization import BatchNormalization, SyncBatchNormalization
from .pooling import AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, MaxPooling2D
from .regularization import Dropout

__all__ = [
    "Layer", "KerasTensor", "clear_session", "Input", "InputLayer", "add", "concatenate", "Activation", "ReLU", "Softmax", "Conv2D", "Dense", "Flatten",
    "ZeroPadding2D", "Add", "Concatenate", "BatchNormalization", "SyncBatchNormalization", "AveragePooling2D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "MaxPooling2D", "Dropout",
    "LeakyReLU", "Reshape", "Rescaling", "UpSampling2D", "Average", "Multiply", "Maximum", "Minimum",
    "average", "multiply", "maximum", "minimum", "Conv2DTranspose", "DepthwiseConv2D", "SeparableConv2D",
]
