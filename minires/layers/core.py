"""Dense, Flatten and ZeroPadding2D: the layers that only reshape or multiply."""
import math

from .. import initializers
from ..padding import crop_2d, pad_2d
from .activations import get_activation, linear
from .base import Layer, as_pair, check_positive_int


class KernelLayer(Layer):
    """What Dense and Conv2D share: a kernel whose axis -2 matches the input's
    last axis, an optional bias, and an optional activation applied after."""
    input_name = "channels"

    def __init__(self, activation, use_bias, kernel_initializer, bias_initializer, name, **kwargs):
        super().__init__(name=name, **kwargs)
        self.activation = activation
        self.activation_forward, self.activation_backward = get_activation(activation, self.name)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer, f"layer {self.name!r}")
        self.bias_initializer = initializers.get(bias_initializer, f"layer {self.name!r}")

    def activate(self, z):
        """The activation of ``z``, remembering what backward needs: the output
        only when the activation's gradient depends on it (not for linear, the
        usual case before a BN: keeping it would double a conv's memory)."""
        y = self.activation_forward(z)
        self.out_shape = y.shape
        self.y = None if self.activation_forward is linear else y
        return y

    def activation_grad(self, dy):
        """dL/dz from dL/dy, after checking dy against the last output's shape."""
        out_shape = self._require_forward("out_shape")
        return self.activation_backward(self._check_grad(dy, out_shape), self.y)

    def add_kernel_and_bias(self, kernel_shape, like_array):
        self.add_weight("kernel", kernel_shape, self.kernel_initializer, like_array)
        if self.use_bias:
            self.add_weight("bias", kernel_shape[-1:], self.bias_initializer, like_array)

    def _check_built_shape(self, shape):
        expected = self.params["kernel"].shape[-2]
        if shape[-1] != expected:
            raise ValueError(f"layer {self.name!r} was built for {expected} input {self.input_name}, "
                             f"got an input of shape {tuple(shape)}")


class Dense(KernelLayer):
    """Fully connected layer: y = act(x @ W + b), on the last axis of x.

    Shapes: x (N, D_in) (or (N, ..., D_in)), W (D_in, D_out), b (D_out,),
    y (N, D_out) (or (N, ..., D_out)).

    Backward, from dz = dL/dz (the activation's gradient already applied):
        dL/dx = dz @ W.T        each x[n, i] reaches every z[n, j] through W[i, j]
        dL/dW = x.T @ dz        sum over the batch of outer products x[n] dz[n]
        dL/db = dz.sum(axis=0)  b is added to every row
    """
    min_input_rank = 2
    input_name = "features"

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", name=None, **kwargs):
        super().__init__(activation, use_bias, kernel_initializer, bias_initializer, name, **kwargs)
        self.units = check_positive_int(units, "units", self.name)
        self.x = None

    def build(self, input_shape, like_array):
        self.add_kernel_and_bias((self.known_size(input_shape, -1), self.units), like_array)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def forward(self, x, training=False):
        x = self._prepare(x)
        self.x = x.reshape(-1, x.shape[-1])
        z = self.x @ self.params["kernel"]
        if self.use_bias:
            z += self.params["bias"]
        return self.activate(z.reshape(*x.shape[:-1], self.units))

    def backward(self, dy):
        x = self._require_forward("x")
        dz = self.activation_grad(dy).reshape(-1, self.units)
        self.grads["kernel"] = x.T @ dz
        if self.use_bias:
            self.grads["bias"] = dz.sum(axis=0)
        return (dz @ self.params["kernel"].T).reshape(*self.out_shape[:-1], x.shape[1])


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1*d2*...), in C order (channels-last, as Keras).

    Backward: flattening moves no value, so the gradient is only reshaped back.
    """
    min_input_rank = 2

    def compute_output_shape(self, input_shape):
        rest = input_shape[1:]
        return input_shape[0], None if None in rest else math.prod(rest)

    def forward(self, x, training=False):
        x = self._prepare(x)
        self.input_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        shape = self._require_forward("input_shape")
        return self._check_grad(dy, (shape[0], math.prod(shape[1:]))).reshape(shape)


class ZeroPadding2D(Layer):
    """Adds rows and columns of zeros around (N, H, W, C) images.

    padding: int p (p everywhere), (ph, pw) (ph top and bottom, pw left and
    right) or ((top, bottom), (left, right)), as in Keras.
    Backward: the zeros depend on nothing; the interior is copied, so its
    gradient is the interior of dy.
    """
    input_rank = 4

    def __init__(self, padding=(1, 1), name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(padding, (tuple, list)) and all(isinstance(p, (tuple, list)) for p in padding):
            if len(padding) != 2:
                raise ValueError(f"layer {self.name!r}: padding must be ((top, bottom), "
                                 f"(left, right)), got {padding!r}")
            rows = as_pair(padding[0], "padding", self.name, allow_zero=True)
            cols = as_pair(padding[1], "padding", self.name, allow_zero=True)
        else:
            ph, pw = as_pair(padding, "padding", self.name, allow_zero=True)
            rows, cols = (ph, ph), (pw, pw)
        self.padding = (rows, cols)

    def compute_output_shape(self, input_shape):
        n, height, width, channels = input_shape
        (top, bottom), (left, right) = self.padding
        return (n, None if height is None else height + top + bottom,
                None if width is None else width + left + right, channels)

    def forward(self, x, training=False):
        x = self._prepare(x)
        y = pad_2d(x, self.padding)
        self.output_shape = y.shape
        return y

    def backward(self, dy):
        return crop_2d(self._check_grad(dy, self._require_forward("output_shape")), self.padding)
