"""Pooling: max and average over sliding windows, and over the whole image."""
from ..backend import get_array_module
from ..kernels import col2im, im2col, max_pool_backward, max_pool_forward
from ..padding import PADDINGS, crop_2d, pad_2d
from .base import Layer, as_pair, check_choice, window_output_shape, window_pads


class _GlobalPooling2D(Layer):
    """(N, H, W, C) -> (N, C), over at least one pixel."""
    input_rank = 4

    def compute_output_shape(self, input_shape):
        return input_shape[0], input_shape[3]

    def _check_built_shape(self, shape):
        if 0 in shape[1:3]:
            raise ValueError(f"layer {self.name!r} pools over each image's pixels, but the input "
                             f"of shape {tuple(shape)} has none")


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

    def pads(self, x_shape):
        """((top, bottom), (left, right)): the padding of inputs of ``x_shape``."""
        return window_pads(self, x_shape, self.pool_size, self.strides, self.padding)[0]


class MaxPooling2D(_Pooling2D):
    """y[n, oh, ow, c] = max over the window of x[n, oh*sh + i, ow*sw + j, c].

    Shapes: x (N, H, W, C) -> y (N, OH, OW, C).  'same' padding is filled with
    -inf, so a padded position never wins (Keras ignores the padding).
    Backward: the max is a switch, dy/dx = 1 for the window's winner, 0 for
    the rest; each dy goes to its winner, and a pixel that wins several
    overlapping windows (3x3 stride 2) collects all their gradients.
    Loop-by-loop twin: ``naive.max_pool_forward`` / ``max_pool_backward``.
    """

    def forward(self, x, training=False):
        x = self._prepare(x)
        pads = self.pads(x.shape)
        xpad = pad_2d(x, pads, value=-float("inf"))
        y, argmax = max_pool_forward(xpad, *self.pool_size, *self.strides)   # argmax: i*pw + j
        return y, (argmax, xpad.shape, pads)

    def backward(self, dy, cache):
        argmax, padded_shape, pads = cache
        dy = self._check_grad(dy, argmax.shape)
        dxpad = max_pool_backward(dy, argmax, padded_shape, *self.pool_size, *self.strides)
        return crop_2d(dxpad, pads)


class AveragePooling2D(_Pooling2D):
    """y[n, oh, ow, c] = (1 / m) * sum over the window of x, m = real pixels in it.

    'same' padding does not count: a window that hangs over the border is
    averaged over the m pixels it really covers (Keras's rule).
    Backward: each of the m pixels gets dy / m; overlaps add up (col2im).
    Loop-by-loop twin: ``naive.avg_pool_forward`` / ``avg_pool_backward``.
    """

    def forward(self, x, training=False):
        x = self._prepare(x)
        xp = get_array_module(x)
        pads = self.pads(x.shape)
        xpad = pad_2d(x, pads)
        real = pad_2d(xp.ones((1, *x.shape[1:3], 1), dtype=x.dtype), pads)    # 1 where x is real
        counts = im2col(real, *self.pool_size, *self.strides).sum(axis=(3, 4))
        y = im2col(xpad, *self.pool_size, *self.strides).sum(axis=(3, 4)) / counts
        return y, (counts, xpad.shape, pads)

    def backward(self, dy, cache):
        counts, padded_shape, pads = cache
        xp = get_array_module(dy)
        dy = self._check_grad(dy, (padded_shape[0], *counts.shape[1:3], padded_shape[3]))
        share = (dy / counts)[:, :, :, None, None, :]
        dcols = xp.broadcast_to(share, (*dy.shape[:3], *self.pool_size, dy.shape[3]))
        return crop_2d(col2im(dcols, padded_shape, *self.strides), pads)


class GlobalAveragePooling2D(_GlobalPooling2D):
    """y[n, c] = mean over h, w of x[n, h, w, c]; (N, H, W, C) -> (N, C).

    Backward: every pixel contributed 1 / (H*W) of the mean: dx = dy / (H*W).
    """

    def forward(self, x, training=False):
        x = self._prepare(x)
        return x.mean(axis=(1, 2)), x.shape

    def backward(self, dy, x_shape):
        n, h, w, c = x_shape
        dy = self._check_grad(dy, (n, c))
        xp = get_array_module(dy)
        return xp.broadcast_to(dy[:, None, None, :] / (h * w), (n, h, w, c)).copy()


class GlobalMaxPooling2D(_GlobalPooling2D):
    """y[n, c] = max over h, w of x[n, h, w, c]; (N, H, W, C) -> (N, C).

    Backward: dy goes to the (first) pixel that held the maximum.
    """

    def forward(self, x, training=False):
        x = self._prepare(x)
        n, h, w, c = x.shape
        flat = x.reshape(n, h * w, c)                # not -1: a batch of none has a shape too
        argmax = flat.argmax(axis=1)
        y = get_array_module(x).take_along_axis(flat, argmax[:, None, :], axis=1)[:, 0, :]
        return y, (argmax, x.shape)

    def backward(self, dy, cache):
        argmax, (n, h, w, c) = cache
        dy = self._check_grad(dy, (n, c))
        xp = get_array_module(dy)
        winner = xp.arange(h * w)[None, :, None] == argmax[:, None, :]
        return xp.where(winner, dy[:, None, :], xp.zeros((), dy.dtype)).reshape(n, h, w, c)
