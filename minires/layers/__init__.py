"""Layers with Keras's names and arguments; each has forward and backward."""
from .activations import Activation, ReLU, Softmax
from .base import KerasTensor, Layer, clear_session
from .conv import Conv2D
from .core import Dense, Flatten, ZeroPadding2D
from .input_layer import Input, InputLayer
from .merge import Add, Concatenate, add, concatenate
from .normalization import BatchNormalization
from .pooling import AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, MaxPooling2D
from .regularization import Dropout

__all__ = [
    "Layer", "KerasTensor", "clear_session", "Input", "InputLayer", "add", "concatenate", "Activation", "ReLU", "Softmax", "Conv2D", "Dense", "Flatten",
    "ZeroPadding2D", "Add", "Concatenate", "BatchNormalization", "AveragePooling2D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "MaxPooling2D", "Dropout",
]
