"""The fast variants the planner (minires/planner.py) puts in place of layer
calls: the same outputs and gradients, to float rounding, with less work.

For forwards whose backward follows (training, a gradient):

WinogradConv: Conv2D, 3x3, stride 1, no activation (every 3x3 conv of
ResNet-50), by Winograd where it pays for the shape (kernels.winograd):
  forward   z = x * W + b by Winograd F(2x2, 3x3) (kernels.winograd_conv3x3;
            FORWARD_TILE_SIZE says why not F(4x4) here) instead of im2col and
            one product. The kernel is transformed at each call, as training
            changes it at every step (one (m+2)^2 x 9 product: 2 ms for a
            512x512 kernel).
  backward  dW by Winograd too: the forward computes M[k] = V[k] @ U[k] from
            the transformed input tiles V and kernel U, so dU[k] = V[k]^T dM[k],
            where dM is dz taken back through the output transform (its
            adjoint, kernels.winograd.gradient_tiles), and dW is dU taken back
            through the kernel transform (kernel_gradient). db as the layer.
            dx, for stride 1, is itself a 3x3 stride-1 correlation. Along one
            axis, z[o] = sum_k x[o + k - top] W[k] (k = 0, 1, 2), so
                dx[h] = sum_k dz[h + top - k] W[k] = sum_k dzpad[h + k] W[2 - k],
            with dzpad = dz padded by 2 - top before and 2 - bottom after:
            the same correlation, of dz, with the kernel flipped and its
            (C, F) axes swapped (dx's channels are what it outputs). Winograd
            runs it instead of dZ @ Wm^T (9 times dz's memory) and col2im.
  Where Winograd does not pay (a batch too small, few channels), the layer's
  own forward or backward runs: the cache is the layer's, (x, None).
  Measured on ResNet-50's shapes at batch 32 (2 cores), forward, dx and dW of
  all sixteen 3x3 convs: im2col 732 + 652 + 708 ms, F(2x2) 421 + 417 + 631,
  F(4x4) 340 + 335 + 504.
(BatchNormReLU, a BN and the ReLU after it as one op, is in layers/normalization.py.)

For inference alone, four rewrites (FoldedConv, AddRelu):
1. Batch norm folded into the conv before it. In inference BN is an affine
   map per channel, y = s * z + t with s = gamma / sqrt(var + eps) and
   t = beta - s * mean, and z = x * W + b is linear, so
       y = x * (W s) + (b s + t):
   one conv with a scaled kernel and a new bias, and no BN pass at all.
2. The conv's bias, the residual Add of a ResNet block (when its other
   input is already computed) and the ReLU after them applied in ONE
   in-place pass over the conv's output (kernels.add_relu_), instead of
   four passes and an Add layer's new array.
3. 3x3 stride-1 convs by Winograd's F(4x4, 3x3) or F(2x2, 3x3): 4x or 2.25x
   fewer multiplications than im2col, the kernel transformed once, at
   planning; which one, or im2col, is chosen per layer from its shape.
4. Convs work in chunks of images (``backend.im2col_limit()``), and 1x1
   convs need no im2col at all (kernels.conv2d).
"""
from . import kernels
from .backend import get_array_module
from .kernels.winograd import transform_kernel, winograd_pays_at, winograd_tile_size
from .layers.activations import activation_name, relu
from .ops import LayerCall

# The forward takes F(2x2) at most: its output feeds the loss and every BN's
# batch statistics, and F(4x4)'s float32 rounding (kernels/winograd.py) made a
# training forward's ResNet-50 logits 2.7e-5 (relative) from the plain path's,
# F(2x2) 9.8e-6 (plain float32 itself is 1.4e-5 from float64). dW and dx, which
# no later value is computed from, take F(4x4) where it pays (80 ms of a 5.4 s
# step is what the forward gives up).
FORWARD_TILE_SIZE = 2


class WinogradConv(LayerCall):
    """A 3x3 stride-1 Conv2D without activation, by Winograd where it pays."""

    def forward(self, inputs, training, keep_cache):
        conv, x = self.layer, inputs[0]
        m = self.tile_size(x, x.shape[3], conv.filters, output=True) if self.takes(x) else None
        if m is None:                                # the layer casts, or names what is wrong
            return conv.forward(x, training=training)
        pads, out_size = conv.pads(x.shape)
        kernel = conv.params["kernel"]
        z = kernels.winograd_conv3x3(x, transform_kernel(kernel, min(m, FORWARD_TILE_SIZE)), pads,
                                     out_size, bias_of(conv), None, False)
        return z, (x, None)                          # the layer's cache: no activation, y not kept

    def backward(self, dz, cache, input_grad=True, from_logits=False):
        conv, (x, _) = self.layer, cache
        pads, out_size = conv.pads(x.shape)
        m = self.tile_size(x, x.shape[3], conv.filters, output=True)
        m_dx = self.tile_size(x, conv.filters, x.shape[3], output=False) if input_grad else None
        if m is None or (input_grad and m_dx is None) or dz.shape != (x.shape[0], *out_size, conv.filters):
            return super().backward(dz, cache, input_grad)              # it names a wrong shape
        conv.add_grad("kernel", kernels.winograd_kernel_gradient(x, dz, pads, m))
        if conv.use_bias:
            conv.add_grad("bias", kernels.column_sums(dz.reshape(-1, conv.filters)))
        if not input_grad:
            return [None]
        (top, bottom), (left, right) = pads
        flipped = conv.params["kernel"][::-1, ::-1].transpose(0, 1, 3, 2)    # W[2 - i, 2 - j, f, c]
        return [kernels.winograd_conv3x3(dz, transform_kernel(flipped, m_dx),
                                         ((2 - top, 2 - bottom), (2 - left, 2 - right)), x.shape[1:3],
                                         zeros(flipped.shape[-1], flipped), None, False)]

    def takes(self, x):
        """Whether ``x`` is what the layer takes as it is (no cast, its channels)."""
        kernel = self.layer.params["kernel"]
        return x.ndim == 4 and x.dtype == kernel.dtype and x.shape[3] == kernel.shape[2]

    def tile_size(self, x, channels, filters, output):
        """m of Winograd F(m x m, 3x3) for a 3x3 stride-1 correlation with ``channels``
        in and ``filters`` out, computing the conv's output (``output``) or dx from
        dz, over a batch like ``x``; None where im2col is the better way."""
        size = self.layer.pads(x.shape)[1] if output else x.shape[1:3]
        m = winograd_tile_size(size, channels, filters, self.layer.params["kernel"].itemsize)
        return m if m is not None and winograd_pays_at(x.shape[0], size, m) else None


class FoldedConv:
    """Conv2D [+ BatchNormalization folded in] [+ residual Add] [+ ReLU], the
    last three in one pass over the conv's output (inference only)."""

    def __init__(self, tensor, bn, relu):
        self.conv, self.relu = tensor.layer, relu
        kernel, bias = self.conv.params["kernel"], bias_of(self.conv)
        if bn is not None:
            p, xp = bn.params, get_array_module(kernel)
            scale = p["gamma"] / xp.sqrt(p["moving_variance"] + bn.epsilon)
            kernel, bias = kernel * scale, (bias - p["moving_mean"]) * scale + p["beta"]
        self.kernel, self.bias = kernel.astype(kernel.dtype), bias.astype(kernel.dtype)
        self.activation = None if activation_name(self.conv) in (None, "linear") else self.conv.activation_forward
        winograd = self.conv.kernel_size == (3, 3) and self.conv.strides == (1, 1) and self.activation is None
        # m of Winograd F(m x m, 3x3), or None for im2col
        self.tile_size = winograd_tile_size(tensor.shape[1:3], *self.kernel.shape[2:], self.kernel.itemsize) \
            if winograd else None
        self.winograd_kernel = None if self.tile_size is None else \
            transform_kernel(self.kernel, self.tile_size)

    def forward(self, inputs, training, keep_cache):
        x, *residual = [as_dtype(a, self.kernel.dtype) for a in inputs]    # as Conv2D, Add cast
        residual = residual[0] if residual else None
        pads, out_size = self.conv.pads(x.shape)
        if self.winograd_kernel is not None and winograd_pays_at(x.shape[0], out_size, self.tile_size):
            return kernels.winograd_conv3x3(x, self.winograd_kernel, pads, out_size,
                                            self.bias, residual, self.relu), None
        z = kernels.conv2d(x, self.kernel, pads, self.conv.strides)
        if self.activation is None:
            return kernels.add_relu_(z, self.bias, residual, self.relu), None
        z = self.activation(kernels.add_relu_(z, self.bias, None, False))   # the conv's own
        return (relu(z) if self.relu else z), None


class AddRelu:
    """Add [+ ReLU], writing into an input that nothing else reads (inference only).

    writable[i]: no later step reads input i, which is neither a model input
    (the caller's array) nor an output, nor read twice here (the planner knows)."""

    def __init__(self, dtype, relu, writable):
        self.dtype, self.relu, self.writable = dtype, relu, writable

    def forward(self, inputs, training, keep_cache):
        arrays = [as_dtype(x, self.dtype) for x in inputs]              # as the Add layer casts
        free = [array is not x or (writable and array.base is None)     # a copy, or unshared
                for array, x, writable in zip(arrays, inputs, self.writable)]
        first = free.index(True) if any(free) else 0
        out = arrays[first] if free[first] else arrays[first].copy()
        others = arrays[:first] + arrays[first + 1:]
        no_bias = zeros(out.shape[-1], out)
        for i, x in enumerate(others):
            kernels.add_relu_(out, no_bias, x, self.relu and i == len(others) - 1)
        return out, None


def bias_of(conv):
    return conv.params["bias"] if conv.use_bias else zeros(conv.filters, conv.params["kernel"])


def zeros(size, like):
    return get_array_module(like).zeros(size, like.dtype)


def as_dtype(x, dtype):
    """``x`` in ``dtype``, as a layer casts its input (Layer.as_float_array): a copy only when needed."""
    return x if x.dtype == dtype else x.astype(dtype)
