"""Pooling: max and average over sliding windows, and over the whole image."""
from ..backend import get_array_module
from ..kernels import col2im, im2col, max_pool_backward, max_pool_forward
from ..padding import PADDINGS, crop_2d, pad_2d
from .base import Layer, as_pair, check_choice, window_output_shape, window_pads


class _GlobalPooling2D(Layer):
    """(N, H, W, C) -> (N, C)."""
    input_rank = 4

    def compute_output_shape(self, input_shape):
        return input_shape[0], input_shape[3]


class _Pooling2D(Layer):
    """Shared arguments of the windowed poolings; strides default to pool_size."""
    input_rank = 4

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.pool_size = as_pair(pool_size, "pool_size", self.name)
        self.strides = self.pool_size if strides is None else as_pair(strides, "strides", self.name)
        self.padding = check_choice(padding, PADDINGS, "padding", self.name)

    def compute_output_shape(self, input_shape):
        return window_output_shape(self, input_shape, self.pool_size, self.strides,
                                   self.padding, input_shape[-1])

    def _pads(self, x):
        self.pads, _ = window_pads(self, x.shape, self.pool_size, self.strides, self.padding)
        return self.pads


class MaxPooling2D(_Pooling2D):
    """y[n, oh, ow, c] = max over the window of x[n, oh*sh + i, ow*sw + j, c].

    Shapes: x (N, H, W, C) -> y (N, OH, OW, C).  'same' padding is filled with
    -inf, so a padded position never wins (Keras ignores the padding).
    Backward: the max is a switch, dy/dx = 1 for the window's winner, 0 for
    the rest; each dy goes to its winner, and a pixel that wins several
    overlapping windows (3x3 stride 2) collects all their gradients.
    """

    def forward(self, x, training=False):
        x = self._prepare(x)
        xpad = pad_2d(x, self._pads(x), value=-float("inf"))
        self.padded_shape = xpad.shape
        y, self.argmax = max_pool_forward(xpad, *self.pool_size, *self.strides)
        return y

    def backward(self, dy):
        argmax = self._require_forward("argmax")
        dy = self._check_grad(dy, argmax.shape)
        dxpad = max_pool_backward(dy, argmax, self.padded_shape, *self.pool_size, *self.strides)
        return crop_2d(dxpad, self.pads)


class AveragePooling2D(_Pooling2D):
    """y[n, oh, ow, c] = (1 / m) * sum over the window of x, m = real pixels in it.

    'same' padding does not count: a window that hangs over the border is
    averaged over the m pixels it really covers (Keras's rule).
    Backward: each of the m pixels gets dy / m; overlaps add up (col2im).
    """

    def forward(self, x, training=False):
        x = self._prepare(x)
        xp = get_array_module(x)
        pads = self._pads(x)
        xpad = pad_2d(x, pads)
        self.padded_shape = xpad.shape
        real = pad_2d(xp.ones((1, *x.shape[1:3], 1), dtype=x.dtype), pads)
        self.counts = im2col(real, *self.pool_size, *self.strides).sum(axis=(3, 4))
        y = im2col(xpad, *self.pool_size, *self.strides).sum(axis=(3, 4)) / self.counts
        self.output_shape = y.shape
        return y

    def backward(self, dy):
        counts = self._require_forward("counts")
        xp = get_array_module(dy)
        dy = self._check_grad(dy, self.output_shape)
        share = (dy / counts)[:, :, :, None, None, :]
        dcols = xp.broadcast_to(share, (*dy.shape[:3], *self.pool_size, dy.shape[3]))
        return crop_2d(col2im(dcols, self.padded_shape, *self.strides), self.pads)


class GlobalAveragePooling2D(_GlobalPooling2D):
    """y[n, c] = mean over h, w of x[n, h, w, c]; (N, H, W, C) -> (N, C).

    Backward: every pixel contributed 1 / (H*W) of the mean: dx = dy / (H*W).
    """

    def forward(self, x, training=False):
        x = self._prepare(x)
        self.input_shape = x.shape
        return x.mean(axis=(1, 2))

    def backward(self, dy):
        n, h, w, c = self._require_forward("input_shape")
        dy = self._check_grad(dy, (n, c))
        xp = get_array_module(dy)
        return xp.broadcast_to(dy[:, None, None, :] / (h * w), (n, h, w, c)).copy()


class GlobalMaxPooling2D(_GlobalPooling2D):
    """y[n, c] = max over h, w of x[n, h, w, c]; (N, H, W, C) -> (N, C).

    Backward: dy goes to the (first) pixel that held the maximum.
    """

    def forward(self, x, training=False):
        x = self._prepare(x)
        self.input_shape = x.shape
        flat = x.reshape(x.shape[0], -1, x.shape[3])
        self.argmax = flat.argmax(axis=1)
        return get_array_module(x).take_along_axis(flat, self.argmax[:, None, :], axis=1)[:, 0, :]

    def backward(self, dy):
        n, h, w, c = self._require_forward("input_shape")
        dy = self._check_grad(dy, (n, c))
        xp = get_array_module(dy)
        winner = xp.arange(h * w)[None, :, None] == self.argmax[:, None, :]
        return xp.where(winner, dy[:, None, :], xp.zeros((), dy.dtype)).reshape(n, h, w, c)
