"""Depthwise and separable 2-D convolutions: Conv2D split into its two jobs.

A Conv2D looks at space (the kh x kw window) and mixes channels (C -> F) in
one kernel of kh*kw*C*F weights. DepthwiseConv2D does the spatial part alone,
each channel on its own; SeparableConv2D follows it with a 1x1 Conv2D that
does the mixing: kh*kw*C*M + C*M*F weights instead (MobileNet, Xception).
"""
from .. import initializers
from ..backend import get_array_module
from ..kernels import col2im, im2col
from ..padding import crop_2d, pad_2d
from .base import check_positive_int, window_output_shape
from .kernel import UNIMPLEMENTED, WindowKernelLayer


def flat_windows_and_kernel(cols, kernel):
    """im2col's (N, OH, OW, kh, kw, C) and W (kh, kw, C, M) as X (N*OH*OW, kh*kw, C)
    and Wk (kh*kw, C, M): X[:, :, c] is channel c's own im2col matrix."""
    kh, kw, channels, multiplier = kernel.shape
    return cols.reshape(-1, kh * kw, channels), kernel.reshape(kh * kw, channels, multiplier)


class DepthwiseStage(WindowKernelLayer):
    """The depthwise product that DepthwiseConv2D and SeparableConv2D share, with
    its backward; ``depthwise_name`` is the kernel's name in Keras."""
    depthwise_name = "kernel"
    # Keras names their kernels' penalties depthwise_ / pointwise_regularizer, not kernel_
    unimplemented = {**UNIMPLEMENTED, "kernel_regularizer": (None,)}

    def __init__(self, kernel_size, strides, padding, depth_multiplier, activation, use_bias,
                 depthwise_initializer, bias_initializer, name, **kwargs):
        super().__init__(kernel_size, strides, padding, activation, use_bias,
                         depthwise_initializer, bias_initializer, name, **kwargs)
        self.depth_multiplier = check_positive_int(depth_multiplier, "depth_multiplier", self.name)
        self.depthwise_initializer = self.kernel_initializer      # Keras's name, for get_config

    def add_depthwise_kernel(self, input_shape, like_array):
        """Creates W (kh, kw, C, M); returns C*M, the depthwise output's channels."""
        channels = self.known_size(input_shape, -1)
        self.add_weight(self.depthwise_name, (*self.kernel_size, channels, self.depth_multiplier),
                        self.kernel_initializer, like_array)
        return channels * self.depth_multiplier

    def depthwise(self, x):
        """u[n, oh, ow, c*M + m] = sum_{i,j} xpad[n, oh*sh+i, ow*sw+j, c] W[i, j, c, m]."""
        pads, out_size = self.pads(x.shape)
        cols = im2col(pad_2d(x, pads), *self.kernel_size, *self.strides)
        windows, kernel = flat_windows_and_kernel(cols, self.params[self.depthwise_name])
        u = get_array_module(x).einsum("pkc,kcm->pcm", windows, kernel)      # Z_c = X_c @ W_c
        return u.reshape(x.shape[0], *out_size, u.shape[1] * u.shape[2])    # (c, m) -> c*M + m

    def depthwise_backward(self, x, du, input_grad):
        """Adds dL/dW from du = dL/du; returns dL/dx (None unless ``input_grad``)."""
        xp = get_array_module(x)
        pads, _ = self.pads(x.shape)
        xpad = pad_2d(x, pads)
        cols = im2col(xpad, *self.kernel_size, *self.strides)
        windows, kernel = flat_windows_and_kernel(cols, self.params[self.depthwise_name])
        du = du.reshape(-1, *kernel.shape[1:])                                   # dZ (P, C, M)
        d_kernel = xp.einsum("pkc,pcm->kcm", windows, du)                        # dW_c = X_c.T @ dZ_c
        self.add_grad(self.depthwise_name, d_kernel.reshape(self.params[self.depthwise_name].shape))
        if not input_grad:
            return None
        d_cols = xp.einsum("pcm,kcm->pkc", du, kernel).reshape(cols.shape)      # dX_c = dZ_c @ W_c.T
        return crop_2d(col2im(d_cols, xpad.shape, *self.strides), pads)


class DepthwiseConv2D(DepthwiseStage):
    """y[n, oh, ow, c*M + m] = act(b[c*M + m] + sum_{i,j} xpad[n, oh*sh+i, ow*sw+j, c] W[i, j, c, m]).

    Each input channel c is convolved on its own with its M = depth_multiplier
    kernels W[:, :, c, :]; no channel reads another.

    Shapes: x (N, H, W, C), kernel W (kh, kw, C, M), bias b (C*M,), y (N, OH, OW, C*M).

    That is C Conv2Ds with one input channel each: im2col gives channel c its
    windows X_c (N*OH*OW, kh*kw), and with W_c = W[:, :, c, :].reshape(kh*kw, M),
    Z_c = X_c @ W_c (column m of Z_c is output channel c*M + m). One einsum runs
    the C products at once: Z[p, c, m] = sum_k X[p, k, c] W[k, c, m].
    Backward, from dZ = dL/dz, channel by channel as Conv2D:
        dW_c = X_c.T @ dZ_c     each weight meets every window of its channel
        db   = sum_rows dZ
        dX_c = dZ_c @ W_c.T,    dx = col2im(dX), cropped: windows overlap
    Loop-by-loop twin: ``naive.depthwise_conv2d_forward`` / ``depthwise_conv2d_backward``.
    """

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1, *,
                 activation=None, use_bias=True, depthwise_initializer="glorot_uniform",
                 bias_initializer="zeros", name=None, **kwargs):
        super().__init__(kernel_size, strides, padding, depth_multiplier, activation, use_bias,
                         depthwise_initializer, bias_initializer, name, **kwargs)

    def build(self, input_shape, like_array):
        self.add_bias(self.add_depthwise_kernel(input_shape, like_array), like_array)

    def compute_output_shape(self, input_shape):
        channels = None if input_shape[-1] is None else input_shape[-1] * self.depth_multiplier
        return window_output_shape(self, input_shape, self.kernel_size, self.strides,
                                   self.padding, channels)

    def forward(self, x, training=False):
        x = self._prepare(x)
        y = self.bias_and_activation(self.depthwise(x))
        return y, (x, self.output_for_backward(y))

    def backward(self, dy, cache, through_activation=True, input_grad=True):
        """dL/dx (None when ``input_grad`` is False)."""
        x, y = cache
        _, out_size = self.pads(x.shape)
        out_shape = (x.shape[0], *out_size, x.shape[-1] * self.depth_multiplier)
        dz = self.bias_and_activation_backward(dy, y, out_shape, through_activation)
        return self.depthwise_backward(x, dz, input_grad)


class SeparableConv2D(DepthwiseStage):
    """y = act(b + pointwise(depthwise(x))): a DepthwiseConv2D without bias,
    then a 1x1 Conv2D from its C*M channels to F filters.

        u[n, oh, ow, c*M + m] = sum_{i,j} xpad[n, oh*sh+i, ow*sw+j, c] D[i, j, c, m]
        z[n, oh, ow, f]       = b[f] + sum_k u[n, oh, ow, k] P[0, 0, k, f]

    Shapes: x (N, H, W, C), depthwise_kernel D (kh, kw, C, M), pointwise_kernel
    P (1, 1, C*M, F), bias b (F,), y (N, OH, OW, F); strides and padding belong
    to the depthwise step (a 1x1 window needs neither).

    A 1x1 Conv2D is Dense on every pixel: with u's pixels as rows U (N*OH*OW, C*M)
    and Pm = P.reshape(C*M, F), Z = U @ Pm + b. Backward, from dZ = dL/dz:
        dPm = U.T @ dZ,   db = sum_rows dZ,   dU = dZ @ Pm.T
    and dU goes back through the depthwise step as in DepthwiseConv2D.
    The cache keeps u (C*M/F times y's size) rather than run the depthwise step again.
    """
    depthwise_name = channel_weight = "depthwise_kernel"

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", *, depth_multiplier=1,
                 activation=None, use_bias=True, depthwise_initializer="glorot_uniform",
                 pointwise_initializer="glorot_uniform", bias_initializer="zeros", name=None,
                 **kwargs):
        super().__init__(kernel_size, strides, padding, depth_multiplier, activation, use_bias,
                         depthwise_initializer, bias_initializer, name, **kwargs)
        self.filters = check_positive_int(filters, "filters", self.name)
        self.pointwise_initializer = initializers.get(pointwise_initializer, f"layer {self.name!r}")

    def build(self, input_shape, like_array):
        depthwise_channels = self.add_depthwise_kernel(input_shape, like_array)
        self.add_weight("pointwise_kernel", (1, 1, depthwise_channels, self.filters),
                        self.pointwise_initializer, like_array)
        self.add_bias(self.filters, like_array)

    def compute_output_shape(self, input_shape):
        return window_output_shape(self, input_shape, self.kernel_size, self.strides,
                                   self.padding, self.filters)

    def forward(self, x, training=False):
        x = self._prepare(x)
        u = self.depthwise(x)
        pointwise = self.params["pointwise_kernel"].reshape(-1, self.filters)     # Pm (C*M, F)
        z = (u.reshape(-1, pointwise.shape[0]) @ pointwise).reshape(*u.shape[:3], self.filters)
        y = self.bias_and_activation(z)
        return y, (x, u, self.output_for_backward(y))

    def backward(self, dy, cache, through_activation=True, input_grad=True):
        """dL/dx (None when ``input_grad`` is False)."""
        x, u, y = cache
        dz = self.bias_and_activation_backward(dy, y, (*u.shape[:3], self.filters),
                                               through_activation)
        pointwise = self.params["pointwise_kernel"]
        u_rows, dz_rows = u.reshape(-1, u.shape[-1]), dz.reshape(-1, self.filters)
        self.add_grad("pointwise_kernel", (u_rows.T @ dz_rows).reshape(pointwise.shape))
        du = dz_rows @ pointwise.reshape(-1, self.filters).T                     # dU = dZ @ Pm.T
        return self.depthwise_backward(x, du, input_grad)
