"""minires: a ResNet written from scratch in NumPy, to read and to use.

Start with ``minires.layers`` (each layer's forward and backward side by side),
``minires.naive`` (the loop-by-loop definitions) and ``minires.gradcheck``.
"""
from . import applications, backend, blocks, gradcheck, initializers, layers, losses, models, naive, utils
from .backend import apply_speed_settings, floatx, set_floatx
from .initializers import set_random_seed
from .layers import *  # noqa: F401,F403  (Keras-style: from minires import Conv2D)
from .layers import __all__ as _layer_names
from .losses import SoftmaxCrossEntropy
from .models import Model, Sequential
from . import keras  # noqa: E402  (last: it re-exports the rest under Keras's names)

__version__ = "0.1.0"
__all__ = ["applications", "blocks", "backend", "gradcheck", "initializers", "layers", "losses", "models", "naive", "utils",
           "apply_speed_settings", "floatx", "set_floatx", "set_random_seed", "SoftmaxCrossEntropy", "Model", "Sequential", "keras", *_layer_names]
