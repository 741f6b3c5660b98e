"""2-D convolution (cross-correlation, as in Keras): forward by im2col and one
matrix product, backward by two matrix products and col2im.

Below Conv2D, what its relatives share (WindowKernelLayer): Conv2DTranspose
(conv_transpose.py), DepthwiseConv2D and SeparableConv2D (depthwise.py)."""
from ..kernels import col2im, column_sums, im2col
from ..padding import PADDINGS, crop_2d, pad_2d
from .base import as_pair, check_choice, check_positive_int, window_output_shape, window_pads
from .kernel import KernelLayer


class Conv2D(KernelLayer):
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
    input_rank = 4

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 name=None, **kwargs):
        super().__init__(activation, use_bias, kernel_initializer, bias_initializer, name, **kwargs)
        self.filters = check_positive_int(filters, "filters", self.name)
        self.kernel_size = as_pair(kernel_size, "kernel_size", self.name)
        self.strides = as_pair(strides, "strides", self.name)
        self.padding = check_choice(padding, PADDINGS, "padding", self.name)

    def build(self, input_shape, like_array):
        self.add_kernel_and_bias((*self.kernel_size, self.known_size(input_shape, -1), self.filters),
                                 like_array)

    def compute_output_shape(self, input_shape):
        return window_output_shape(self, input_shape, self.kernel_size, self.strides,
                                   self.padding, self.filters)

    def pads(self, x_shape):
        """((top, bottom), (left, right)) padding and (OH, OW) for inputs of ``x_shape``."""
        return window_pads(self, x_shape, self.kernel_size, self.strides, self.padding)

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


# --- what Conv2D's relatives share (conv_transpose.py, depthwise.py) ---------------------------
# Keras arguments that minires does not implement, each with the values that ask for nothing
# (Keras code often spells the defaults out); any other value is refused, never ignored.
UNIMPLEMENTED = {"dilation_rate": (1, (1, 1)), "groups": (1,), "data_format": (None, "channels_last"),
                 **{name: (None,) for name in (
                     "kernel_regularizer", "depthwise_regularizer", "pointwise_regularizer",
                     "bias_regularizer", "activity_regularizer", "kernel_constraint",
                     "depthwise_constraint", "pointwise_constraint", "bias_constraint")}}


def take_unimplemented(kwargs):
    """Remove Keras's unimplemented arguments from ``kwargs`` and return them
    (Layer would reject them as unknown, without saying what they ask for)."""
    return {name: kwargs.pop(name) for name in list(kwargs) if name in UNIMPLEMENTED}


def refuse_unimplemented(arguments, layer_name):
    """A ValueError naming the first argument whose value asks for what minires does not do."""
    for name, value in arguments.items():
        if (tuple(value) if isinstance(value, list) else value) not in UNIMPLEMENTED[name]:
            accepted = " or ".join(map(repr, UNIMPLEMENTED[name]))
            raise ValueError(f"layer {layer_name!r}: {name}={value!r} is not implemented in "
                             f"minires (it accepts only {accepted})")


class WindowKernelLayer(KernelLayer):
    """A (kh, kw) window sliding with strides over (N, H, W, C) data, Keras's
    'valid'/'same' padding, an optional bias and activation, and Keras's
    arguments that minires does not implement refused by name.

    ``channel_weight`` and ``channel_axis`` say which weight's axis matches the
    input's channels: a built layer refuses any other channel count."""
    input_rank = 4
    channel_weight, channel_axis = "kernel", -2

    def __init__(self, kernel_size, strides, padding, activation, use_bias, kernel_initializer,
                 bias_initializer, name, **kwargs):
        unimplemented = take_unimplemented(kwargs)
        super().__init__(activation, use_bias, kernel_initializer, bias_initializer, name, **kwargs)
        refuse_unimplemented(unimplemented, self.name)
        self.kernel_size = as_pair(kernel_size, "kernel_size", self.name)
        self.strides = as_pair(strides, "strides", self.name)
        self.padding = check_choice(padding, PADDINGS, "padding", self.name)

    def pads(self, x_shape):
        """((top, bottom), (left, right)) padding and (OH, OW) for inputs of ``x_shape``."""
        return window_pads(self, x_shape, self.kernel_size, self.strides, self.padding)

    def add_bias(self, size, like_array):
        if self.use_bias:
            self.add_weight("bias", (size,), self.bias_initializer, like_array)

    def bias_and_activation(self, z):
        """y = act(z + b); z is this call's own array, so b is added in place."""
        if self.use_bias:
            z += self.params["bias"]
        return self.activation_forward(z)

    def bias_and_activation_backward(self, dy, y, out_shape, through_activation):
        """dz = dL/dz from dy = dL/dy (dy is dL/dz itself when not
        ``through_activation``); adds dL/db = sum of dz over every output pixel."""
        dy = self._check_grad(dy, out_shape)
        dz = self.activation_backward(dy, y) if through_activation else dy
        if self.use_bias:
            self.add_grad("bias", column_sums(dz.reshape(-1, dz.shape[-1])))
        return dz

    def _check_built_shape(self, shape):
        expected = self.params[self.channel_weight].shape[self.channel_axis]
        if shape[-1] != expected:
            raise ValueError(f"layer {self.name!r} was built for {expected} input channels, "
                             f"got an input of shape {tuple(shape)}")
