"""2-D convolution (cross-correlation, as in Keras): forward by im2col and one
matrix product, backward by two matrix products and col2im."""
from ..backend import get_array_module
from ..kernels import add_relu_, batch_chunks, col2im, im2col
from ..padding import PADDINGS, crop_2d, pad_2d
from .base import as_pair, check_choice, check_positive_int, window_output_shape, window_pads
from .core import KernelLayer


class Conv2D(KernelLayer):
    """y[n, oh, ow, f] = act(b[f] + sum_{i,j,c} xpad[n, oh*sh+i, ow*sw+j, c] W[i, j, c, f]).

    Shapes: x (N, H, W, C), kernel W (kh, kw, C, F), bias b (F,), y (N, OH, OW, F).

    im2col lays every window out as a row: X (N*OH*OW, kh*kw*C); with
    Wm = W.reshape(kh*kw*C, F) the layer is Z = X @ Wm + b.  Backward, from
    dZ = dL/dZ (the activation's gradient already applied):
        dWm = X.T @ dZ      each weight meets every window it multiplied
        db  = sum_rows dZ   b is added to every output pixel
        dX  = dZ @ Wm.T     each window entry fed every filter
        dx  = col2im(dX)    an input pixel sits in several windows: add them up

    Memory: X is kh*kw times larger than x, so it is built a chunk of images at
    a time (``backend.im2col_limit()``, 128 MiB by default) and only x itself
    is kept for backward, which pads and rebuilds X chunk by chunk. A 1x1 conv
    needs no X at all: its windows are the pixels themselves.
    """
    input_rank = 4

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 name=None, **kwargs):
        super().__init__(activation, use_bias, kernel_initializer, bias_initializer, name, **kwargs)
        self.filters = check_positive_int(filters, "filters", self.name)
        self.kernel_size = as_pair(kernel_size, "kernel_size", self.name)
        self.strides = as_pair(strides, "strides", self.name)
        self.padding = check_choice(padding, PADDINGS, "padding", self.name)
        self.x = None

    def build(self, input_shape, like_array):
        self.add_kernel_and_bias((*self.kernel_size, self.known_size(input_shape, -1), self.filters),
                                 like_array)

    def compute_output_shape(self, input_shape):
        return window_output_shape(self, input_shape, self.kernel_size, self.strides,
                                   self.padding, self.filters)

    def forward(self, x, training=False):
        x = self._prepare(x)
        z = self.convolve(x, self.params["kernel"])
        if self.use_bias:
            add_relu_(z, self.params["bias"], None, relu=False)   # z += b, compiled where it can be
        return self.activate(z)

    def convolve(self, x, kernel):
        """x (N, H, W, C) with ``kernel`` (kh, kw, C, F) -> (N, OH, OW, F), no bias.
        Keeps x (not a padded copy: the layer before holds x anyway) for backward."""
        xp = get_array_module(x)
        self.pads, self.out_size = window_pads(self, x.shape, self.kernel_size,
                                               self.strides, self.padding)
        self.x = x
        flat = kernel.reshape(-1, kernel.shape[-1])
        z = xp.empty((x.shape[0], *self.out_size, flat.shape[1]), dtype=x.dtype)
        for batch, _, cols in self._windows():
            xp.matmul(cols, flat, out=z[batch].reshape(-1, flat.shape[1]))
        return z

    def backward(self, dy):
        x = self._require_forward("x")
        xp = get_array_module(x)
        dz = self.activation_grad(dy)
        kernel = self.params["kernel"].reshape(-1, self.filters)
        d_kernel = xp.zeros_like(kernel)
        dx_parts = []
        for batch, padded_shape, cols in self._windows():
            dz_rows = dz[batch].reshape(-1, self.filters)
            d_kernel += cols.T @ dz_rows
            d_cols = (dz_rows @ kernel.T).reshape(*dz[batch].shape[:3], *self.params["kernel"].shape[:3])
            dx_parts.append(crop_2d(col2im(d_cols, padded_shape, *self.strides), self.pads))
        self.grads["kernel"] = d_kernel.reshape(self.params["kernel"].shape)
        if self.use_bias:
            self.grads["bias"] = dz.sum(axis=(0, 1, 2))
        # one chunk (the usual case): a 1x1 conv's dx is d_cols itself, no copy
        dx = dx_parts[0] if len(dx_parts) == 1 else xp.concatenate(dx_parts)
        return xp.ascontiguousarray(dx)

    def _windows(self):
        """(batch slice, padded shape, im2col rows) for chunks of the batch that
        respect the im2col memory limit; rows are (images * OH * OW, kh * kw * C).
        Each chunk is padded on its own, so no padded copy of x is ever kept."""
        (kh, kw), channels = self.kernel_size, self.x.shape[-1]
        image_bytes = self.out_size[0] * self.out_size[1] * kh * kw * channels * self.x.itemsize
        for batch in batch_chunks(self.x.shape[0], image_bytes):
            xpad = pad_2d(self.x[batch], self.pads)
            yield batch, xpad.shape, im2col(xpad, kh, kw, *self.strides).reshape(-1, kh * kw * channels)
