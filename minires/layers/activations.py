"""Activations: y = f(z), applied elementwise (softmax: along the last axis).

Each backward is written in terms of the OUTPUT y, which is all it needs:
  relu     y = max(z, 0)            dz = dy * [y > 0]
  linear   y = z                    dz = dy
  sigmoid  y = 1 / (1 + e^-z)       dz = dy * y * (1 - y)
  tanh     y = tanh(z)              dz = dy * (1 - y^2)
  softmax  y_i = e^z_i / sum_j e^z_j
           dy_i/dz_k = y_i ([i = k] - y_k), so
           dz_k = sum_i dy_i y_i ([i = k] - y_k) = y_k (dy_k - sum_i dy_i y_i)
"""
from .. import kernels
from ..backend import get_array_module
from .base import Layer, check_choice

# max(z, 0) and dy * (y > 0): kernels/channelwise.py, compiled by Numba where installed
relu, relu_backward = kernels.relu, kernels.relu_backward


def linear(z):
    return z


def linear_backward(dy, y):
    return dy


def sigmoid(z):
    xp = get_array_module(z)
    return 0.5 * (xp.tanh(0.5 * z) + 1)      # = 1 / (1 + e^-z), without overflow


def sigmoid_backward(dy, y):
    return dy * y * (1 - y)


def tanh(z):
    return get_array_module(z).tanh(z)


def tanh_backward(dy, y):
    return dy * (1 - y * y)


def softmax(z, axis=-1):
    """Subtracting the max changes nothing mathematically and keeps exp() finite."""
    xp = get_array_module(z)
    e = xp.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(dy, y, axis=-1):
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


ACTIVATIONS = {
    "relu": (relu, relu_backward),
    "linear": (linear, linear_backward),
    "sigmoid": (sigmoid, sigmoid_backward),
    "tanh": (tanh, tanh_backward),
    "softmax": (softmax, softmax_backward),
}


def activation_name(layer):
    """The activation ``layer`` applies last, by Keras's name ('relu', 'softmax',
    ...): a Dense's or Conv2D's ``activation``, an Activation's, ReLU's, Softmax's;
    None for a layer that applies none. Lower-cased, as the layers read it."""
    name = getattr(layer, "activation", None)
    return name.lower() if isinstance(name, str) else name


def get_activation(name, layer_name):
    """(forward, backward) for an activation name; None means 'linear', as in Keras."""
    name = "linear" if name is None else name
    return ACTIVATIONS[check_choice(name, tuple(ACTIVATIONS), "activation", layer_name)]


class Activation(Layer):
    """Applies a named activation: Activation('relu')."""

    def __init__(self, activation, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.activation = activation
        self.activation_forward, self.activation_backward = get_activation(activation, self.name)

    def forward(self, x, training=False):
        y = self.activation_forward(self._prepare(x))
        return y, y                          # the cache: the output, all the gradients need

    def backward(self, dy, y):
        return self.activation_backward(self._check_grad(dy, y.shape), y)


class ReLU(Activation):
    """max(x, 0) as a layer of its own (Keras's ``ReLU()``)."""

    def __init__(self, name=None, **kwargs):
        super().__init__("relu", name=name, **kwargs)


class LeakyReLU(Layer):
    """y = x where x > 0, else negative_slope * x (Keras's default slope 0.3;
    ``alpha=`` is its older name). Backward: dx = dy where x > 0, else
    negative_slope * dy."""

    def __init__(self, negative_slope=0.3, name=None, alpha=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.negative_slope = negative_slope if alpha is None else alpha
        if not isinstance(self.negative_slope, (int, float)) or not self.negative_slope >= 0:
            raise ValueError(f"layer {self.name!r}: negative_slope must be a number >= 0, "
                             f"got {self.negative_slope!r}")

    def forward(self, x, training=False):
        x = self._prepare(x)
        positive = x > 0
        return get_array_module(x).where(positive, x, x * self.negative_slope), positive

    def backward(self, dy, positive):
        dy = self._check_grad(dy, positive.shape)
        return get_array_module(dy).where(positive, dy, dy * self.negative_slope)


class Softmax(Layer):
    """Softmax along ``axis`` (default the last): y_i = exp(x_i) / sum_j exp(x_j)."""
    activation = "softmax"

    def __init__(self, axis=-1, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.axis = axis

    def forward(self, x, training=False):
        x = self._prepare(x)
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"layer {self.name!r}: axis {self.axis} is out of range "
                             f"for an input of shape {x.shape}")
        y = softmax(x, self.axis)
        return y, y

    def backward(self, dy, y):
        return softmax_backward(self._check_grad(dy, y.shape), y, self.axis)
