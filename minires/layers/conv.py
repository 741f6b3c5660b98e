"""2-D convolution (cross-correlation, as in Keras): forward by im2col and one
matrix product, backward by two matrix products and col2im."""
from ..kernels import col2im, im2col
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
        self.cols = None

    def build(self, input_shape, like_array):
        self.add_kernel_and_bias((*self.kernel_size, self.known_size(input_shape, -1), self.filters),
                                 like_array)

    def compute_output_shape(self, input_shape):
        return window_output_shape(self, input_shape, self.kernel_size, self.strides,
                                   self.padding, self.filters)

    def forward(self, x, training=False):
        x = self._prepare(x)
        self.pads, (out_h, out_w) = window_pads(self, x.shape, self.kernel_size,
                                                self.strides, self.padding)
        xpad = pad_2d(x, self.pads)
        self.padded_shape = xpad.shape
        kernel = self.params["kernel"]
        self.cols = im2col(xpad, *self.kernel_size, *self.strides).reshape(-1, kernel[..., 0].size)
        z = self.cols @ kernel.reshape(-1, self.filters)
        if self.use_bias:
            z += self.params["bias"]
        self.y = self.activation_forward(z.reshape(x.shape[0], out_h, out_w, self.filters))
        return self.y

    def backward(self, dy):
        cols = self._require_forward("cols")
        dy = self._check_grad(dy, self.y.shape)
        dz = self.activation_backward(dy, self.y).reshape(-1, self.filters)
        kernel = self.params["kernel"]
        self.grads["kernel"] = (cols.T @ dz).reshape(kernel.shape)
        if self.use_bias:
            self.grads["bias"] = dz.sum(axis=0)
        dcols = (dz @ kernel.reshape(-1, self.filters).T).reshape(*self.y.shape[:3], *kernel.shape[:3])
        return crop_2d(col2im(dcols, self.padded_shape, *self.strides), self.pads)
