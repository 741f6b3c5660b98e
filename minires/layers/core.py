"""Dense, Flatten, ZeroPadding2D, Reshape, Rescaling and UpSampling2D: the layers
that only reshape, copy or multiply."""
import math

from ..kernels import column_sums
from ..padding import crop_2d, pad_2d
from .base import Layer, as_pair, check_positive_int, is_int
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


class Reshape(Layer):
    """(N, ...) -> (N, *target_shape), in C order; one size may be -1 (inferred).

    Backward: reshaping moves no value, so the gradient is reshaped back.
    """

    def __init__(self, target_shape, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        shape = tuple(target_shape) if isinstance(target_shape, (tuple, list)) else None
        if shape is None or not all(is_int(s) and (s > 0 or s == -1) for s in shape) \
                or shape.count(-1) > 1:
            raise ValueError(f"layer {self.name!r}: target_shape must be a tuple of positive ints "
                             f"with at most one -1, got {target_shape!r}")
        self.target_shape = tuple(int(s) for s in shape)

    def compute_output_shape(self, input_shape):
        size = None if None in input_shape[1:] else math.prod(input_shape[1:])
        return (input_shape[0], *self._resolved(size, input_shape))

    def _resolved(self, size, input_shape):
        """target_shape with its -1 worked out from ``size`` values per sample (None: unknown)."""
        known = math.prod(s for s in self.target_shape if s != -1)
        if size is not None and (size % known if -1 in self.target_shape else size != known):
            raise ValueError(f"layer {self.name!r}: cannot reshape inputs of shape "
                             f"{tuple(input_shape)} to {self.target_shape}")
        missing = None if size is None else size // known
        return tuple(missing if s == -1 else s for s in self.target_shape)

    def forward(self, x, training=False):
        x = self._prepare(x)
        y = x.reshape(x.shape[0], *self._resolved(math.prod(x.shape[1:]), x.shape))
        return y, (x.shape, y.shape)

    def backward(self, dy, shapes):
        input_shape, output_shape = shapes
        return self._check_grad(dy, output_shape).reshape(input_shape)


class Rescaling(Layer):
    """y = x * scale + offset (e.g. scale=1/255 for images). Backward: dx = dy * scale."""

    def __init__(self, scale, offset=0.0, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale, self.offset = scale, offset

    def forward(self, x, training=False):
        return self._prepare(x) * self.scale + self.offset, None

    def backward(self, dy, cache):
        return dy * self.scale


class UpSampling2D(Layer):
    """Each pixel repeated into a size[0] x size[1] block: (N, H, W, C) -> (N, H*sh, W*sw, C)
    (Keras's 'nearest' interpolation).

    Backward: each input pixel fed its whole block, so its gradient is the sum
    of dy over that block.
    """
    input_rank = 4

    def __init__(self, size=(2, 2), interpolation="nearest", name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.size = as_pair(size, "size", self.name)
        if interpolation != "nearest":
            raise ValueError(f"layer {self.name!r}: minires has 'nearest' interpolation only, "
                             f"got {interpolation!r}")
        self.interpolation = interpolation

    def compute_output_shape(self, input_shape):
        n, height, width, channels = input_shape
        return (n, None if height is None else height * self.size[0],
                None if width is None else width * self.size[1], channels)

    def forward(self, x, training=False):
        x = self._prepare(x)
        return x.repeat(self.size[0], axis=1).repeat(self.size[1], axis=2), x.shape

    def backward(self, dy, input_shape):
        n, height, width, channels = input_shape
        dy = self._check_grad(dy, self.compute_output_shape(input_shape))
        return dy.reshape(n, height, self.size[0], width, self.size[1], channels).sum(axis=(2, 4))
