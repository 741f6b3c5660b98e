"""Dense, Flatten and ZeroPadding2D: the layers that only reshape or multiply."""
import math

from ..kernels import column_sums
from ..padding import crop_2d, pad_2d
from .base import Layer, as_pair, check_positive_int
from .kernel import KernelLayer


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

    def build(self, input_shape, like_array):
        self.add_kernel_and_bias((self.known_size(input_shape, -1), self.units), like_array)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def forward(self, x, training=False):
        x = self._prepare(x)
        z = x @ self.params["kernel"]
        if self.use_bias:
            z += self.params["bias"]
        y = self.activation_forward(z)
        return y, (x, self.output_for_backward(y))

    def backward(self, dy, cache, through_activation=True, input_grad=True):
        """dL/dx (None when ``input_grad`` is False: nothing needs it)."""
        x, y = cache
        dy = self._check_grad(dy, (*x.shape[:-1], self.units))
        dz = self.activation_backward(dy, y) if through_activation else dy
        x_rows, dz_rows = x.reshape(-1, x.shape[-1]), dz.reshape(-1, self.units)   # (N, ...) -> rows
        self.add_grad("kernel", x_rows.T @ dz_rows)
        if self.use_bias:
            self.add_grad("bias", column_sums(dz_rows))                          # dz.sum(axis=0)
        return dz @ self.params["kernel"].T if input_grad else None


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
        return x.reshape(x.shape[0], math.prod(x.shape[1:])), x.shape    # not -1: N may be 0

    def backward(self, dy, input_shape):
        dy = self._check_grad(dy, (input_shape[0], math.prod(input_shape[1:])))
        return dy.reshape(input_shape)


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
        y = pad_2d(self._prepare(x), self.padding)
        return y, y.shape

    def backward(self, dy, output_shape):
        return crop_2d(self._check_grad(dy, output_shape), self.padding)
