"""What every layer shares: its name, its weights, input checks, lazy building.

A layer holds
  params  -- its weights by Keras's names, in Keras's order (the order the
             weight files use), e.g. kernel, bias or gamma, beta, moving_mean,
             moving_variance;
  grads   -- dL/d(param) for each trainable param, filled by backward.
and implements
  forward(x, training=False) -> y    keeps what backward needs
  backward(dy) -> dx                 dL/dx from dL/dy, fills grads

Weights are created on the first forward pass, when the input's channel
count is known (Keras calls this ``build``).
"""
import numbers
import re

import numpy as np

from .. import initializers
from ..backend import floatx, is_array, like
from ..padding import window_padding_2d

_name_counts = {}


def clear_session():
    """Reset automatic layer names, so the next Conv2D is 'conv2d' again (as in Keras)."""
    _name_counts.clear()


def snake_case(name):
    """'MaxPooling2D' -> 'max_pooling2d', 'ReLU' -> 're_lu' (Keras's rule)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def unique_name(base):
    """'conv2d', then 'conv2d_1', 'conv2d_2', ... until ``clear_session()``."""
    count = _name_counts.get(base, 0)
    _name_counts[base] = count + 1
    return base if count == 0 else f"{base}_{count}"


class Layer:
    input_rank = None          # required rank of the input, None for any
    min_input_rank = 1         # ... or the lowest rank it accepts

    def __init__(self, name=None, dtype=None, trainable=True):
        self.name = name if name is not None else unique_name(snake_case(type(self).__name__))
        self.dtype = floatx() if dtype is None else _float_dtype_name(dtype, self.name)
        self.trainable = trainable
        self.params = {}
        self.grads = {}
        self.non_trainable_names = set()
        self.built = False

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"

    def __call__(self, inputs, training=False):
        return self.forward(inputs, training=training)

    # --- weights -------------------------------------------------------------
    def add_weight(self, name, shape, initializer, like_array, trainable=True):
        """Create ``params[name]`` on the device of ``like_array``."""
        init = initializers.get(initializer, owner=f"layer {self.name!r}")
        self.params[name] = like(init(tuple(shape), dtype=self.dtype), like_array)
        if not trainable:
            self.non_trainable_names.add(name)
        return self.params[name]

    def trainable_names(self):
        """Names of the params that training updates (Keras order)."""
        if not self.trainable:
            return []
        return [k for k in self.params if k not in self.non_trainable_names]

    def build(self, input_shape, like_array):
        """Create the weights for inputs of ``input_shape``; weightless layers do nothing."""

    # --- input checks --------------------------------------------------------
    def _prepare(self, x):
        """Check one input, cast it to this layer's float type, build on first use."""
        x = self._as_float_array(x)
        if self.input_rank is not None and x.ndim != self.input_rank:
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}) expects a "
                             f"{self.input_rank}-D input {self.input_layout()}, got shape {x.shape}")
        if x.ndim < self.min_input_rank:
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}) expects an input of "
                             f"rank {self.min_input_rank} or more, got shape {x.shape}")
        if not self.built:
            self.build(x.shape, x)
            self.built = True
        self._check_built_shape(x.shape)
        return x

    def input_layout(self):
        return "(N, H, W, C)" if self.input_rank == 4 else ""

    def _check_built_shape(self, shape):
        """Raise when a built layer sees an input its weights do not fit."""

    def _as_float_array(self, x):
        """Float arrays are cast to the layer dtype; integer and bool arrays too
        (like Keras, so uint8 images can go straight in); anything else is a TypeError."""
        if not is_array(x):
            raise TypeError(f"layer {self.name!r} expects a NumPy or CuPy array, "
                            f"got {type(x).__name__}")
        if x.dtype.kind not in "fiub":
            raise TypeError(f"layer {self.name!r} expects a float (or integer) array, "
                            f"got dtype {x.dtype} with shape {x.shape}")
        return x if x.dtype == self.dtype else x.astype(self.dtype)

    def _require_forward(self, attribute):
        """The cache named ``attribute``, or a clear error if forward never ran."""
        value = getattr(self, attribute, None)
        if value is None:
            raise RuntimeError(f"layer {self.name!r}: backward called before forward")
        return value

    def _check_grad(self, dy, expected_shape):
        if tuple(dy.shape) != tuple(expected_shape):
            raise ValueError(f"layer {self.name!r}: backward got a gradient of shape "
                             f"{tuple(dy.shape)}, but its output has shape {tuple(expected_shape)}")
        return dy


def _float_dtype_name(dtype, layer_name):
    if np.dtype(dtype).kind != "f":
        raise TypeError(f"layer {layer_name!r}: dtype must be a float type, got {dtype!r}")
    return np.dtype(dtype).name


def as_pair(value, what, layer_name, allow_zero=False):
    """Keras's int-or-tuple arguments: 3 -> (3, 3); (1, 2) stays; positive ints only."""
    values = list(value) if isinstance(value, (tuple, list)) else [value, value]
    lowest = 0 if allow_zero else 1
    if len(values) != 2 or not all(is_int(v) and v >= lowest for v in values):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"layer {layer_name!r}: {what} must be a {kind} int or a pair "
                         f"of them, got {value!r}")
    return int(values[0]), int(values[1])


def is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(value, what, layer_name):
    """``value`` as an int if it is a positive integer, else a ValueError naming the layer."""
    if not is_int(value) or value < 1:
        raise ValueError(f"layer {layer_name!r}: {what} must be a positive int, got {value!r}")
    return int(value)


def check_choice(value, choices, what, layer_name):
    """``value`` (lower-cased, as Keras does) if it is one of ``choices``,
    else a ValueError naming the layer."""
    value = value.lower() if isinstance(value, str) else value
    if value not in choices:
        raise ValueError(f"layer {layer_name!r}: unknown {what} {value!r}; "
                         f"choose one of {', '.join(map(repr, choices))}")
    return value


def window_pads(layer, shape, window, strides, padding):
    """Padding and output size of a sliding window over (N, H, W, C) ``shape``,
    or a ValueError when the window does not fit the padded input."""
    pads, out = window_padding_2d(shape[1], shape[2], window, strides, padding)
    if min(out) < 1:
        padded = (shape[1] + sum(pads[0]), shape[2] + sum(pads[1]))
        raise ValueError(f"layer {layer.name!r}: window {window} is larger than its padded "
                         f"input {padded} (input shape {tuple(shape)}, padding {padding!r})")
    return pads, out
