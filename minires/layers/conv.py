"""2-D convolution (cross-correlation, as in Keras): forward by im2col and one
matrix product, backward by two matrix products and col2im.

Its relatives, Conv2DTranspose (conv_transpose.py), DepthwiseConv2D and
SeparableConv2D (depthwise.py), share its window (kernel.WindowKernelLayer)."""
from ..kernels import col2im, column_sums, im2col
from ..padding import crop_2d, pad_2d
from .base import check_positive_int, window_output_shape
from .kernel import WindowKernelLayer


class Conv2D(WindowKernelLayer):
    """y[n, oh, ow, f] = act(b[f] + sum_{i,j,c} xpad[n, oh*sh+i, ow*sw+j, c] W[i, j, c, f]).

    Shapes: x (N, H, W, C), kernel W (kh, kw, C, F), bias b (F,), y (N, OH, OW, F).

    im2col lays every window out as a row: X (N*OH*OW, kh*kw*C); with
    Wm = W.reshape(kh*kw*C, F) the layer is Z = X @ Wm + b.  Backward, from
    dZ = dL/dZ (the activation's gradient already applied):
        dWm = X.T @ dZ      each weight meets every window it multiplied
        db  = sum_rows dZ   b is added to every output pixel
        dX  = dZ @ Wm.T     each window entry fed every filter
        dx  = col2im(dX)    an input pixel sits in several windows: add them up,
                            then crop the padding away

    The cache is x itself, not X: X is kh*kw times larger, so backward
    rebuilds it. Loop-by-loop twin: ``naive.conv2d_forward`` / ``conv2d_backward``.
    The inference plan (minires/planner.py, fast_ops.py) runs the same product a
    chunk of images at a time (``kernels.conv2d``), with less memory.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 name=None, **kwargs):
        super().__init__(kernel_size, strides, padding, activation, use_bias, kernel_initializer,
                         bias_initializer, name, **kwargs)
        self.filters = check_positive_int(filters, "filters", self.name)

    def build(self, input_shape, like_array):
        self.add_kernel_and_bias((*self.kernel_size, self.known_size(input_shape, -1), self.filters),
                                 like_array)

    def compute_output_shape(self, input_shape):
        return window_output_shape(self, input_shape, self.kernel_size, self.strides,
                                   self.padding, self.filters)

    def forward(self, x, training=False):
        x = self._prepare(x)
        pads, (out_h, out_w) = self.pads(x.shape)
        cols = im2col(pad_2d(x, pads), *self.kernel_size, *self.strides)   # (N, OH, OW, kh, kw, C)
        kernel = self.params["kernel"].reshape(-1, self.filters)           # Wm (kh*kw*C, F)
        z = (cols.reshape(-1, kernel.shape[0]) @ kernel).reshape(x.shape[0], out_h, out_w, self.filters)
        if self.use_bias:
            z += self.params["bias"]
        y = self.activation_forward(z)
        return y, (x, self.output_for_backward(y))

    def backward(self, dy, cache, through_activation=True, input_grad=True):
        """dL/dx (None when ``input_grad`` is False: the input is an image, say,
        and nothing needs its gradient, so dX and col2im are skipped)."""
        x, y = cache
        pads, out_size = self.pads(x.shape)
        dy = self._check_grad(dy, (x.shape[0], *out_size, self.filters))
        dz = self.activation_backward(dy, y) if through_activation else dy
        xpad = pad_2d(x, pads)
        cols = im2col(xpad, *self.kernel_size, *self.strides)              # X, rebuilt from x
        kernel = self.params["kernel"].reshape(-1, self.filters)
        dz_rows = dz.reshape(-1, self.filters)
        self.add_grad("kernel", (cols.reshape(-1, kernel.shape[0]).T @ dz_rows).reshape(
            self.params["kernel"].shape))
        if self.use_bias:
            self.add_grad("bias", column_sums(dz_rows))                    # sum_rows dZ
        if not input_grad:
            return None
        d_cols = (dz_rows @ kernel.T).reshape(cols.shape)
        return crop_2d(col2im(d_cols, xpad.shape, *self.strides), pads)
