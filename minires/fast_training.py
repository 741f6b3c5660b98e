"""Training's fast path: ResNet's 3x3 stride-1 convolutions by Winograd.

A model runs each layer's own forward and backward (layers/) when it keeps
caches (a training step, a gradient), except for the layer calls that a twin
here computes with fewer multiplications. A twin returns the same outputs and
gradients (to float rounding) and keeps the same cache, so either backward
may follow either forward. ``model.fast_training = False`` runs every layer
as written.

Conv2D, 3x3, stride 1, no activation (every 3x3 conv of ResNet-50), where
Winograd pays for the shape (kernels.winograd.winograd_tile_size):
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
Where dx does not pay (few channels out), the layer's own backward runs.
Measured on ResNet-50's shapes at batch 32 (2 cores), forward, dx and dW of
all sixteen 3x3 convs: im2col 732 + 652 + 708 ms, F(2x2) 421 + 417 + 631,
F(4x4) 340 + 335 + 504.

BatchNormalization then ReLU (the ReLU the BN output's only reader): the pair
runs as one node. Forward: normalize writes xhat and relu(gamma xhat + beta)
in its one pass, and the ReLU node hands that on (no pass of its own).
Backward: the ReLU node hands dy back unchanged; the BN node's two passes
(the sums, then dx) take dy * (gamma xhat + beta > 0), the ReLU's mask
recomputed from xhat rather than stored or read from the ReLU's output:
two passes over memory fewer forward and one fewer backward (of seven
and eight) for each pair, ResNet's conv-BN-ReLU.
"""
from . import kernels
from .backend import get_array_module
from .kernels.winograd import transform_kernel, winograd_pays_at, winograd_tile_size
from .layers import Activation, BatchNormalization, Conv2D
from .layers.activations import linear


def conv_tile_size(layer, x_shape, channels, filters):
    """m of Winograd F(m x m, 3x3) for a 3x3 stride-1 correlation with
    ``channels`` in and ``filters`` out over this layer's (N, H, W, C) input
    or output shape ``x_shape``, or None where im2col is the better way."""
    m = winograd_tile_size(x_shape[1:3], channels, filters, layer.params["kernel"].itemsize)
    return m if m is not None and winograd_pays_at(x_shape[0], x_shape[1:3], m) else None


def takes(layer, x):
    """Whether the twins below take this layer's call on ``x`` (for a backward,
    the x of its cache): a 3x3 stride-1 Conv2D without activation, as written
    in layers/conv.py (a subclass may compute something else), on what it was built for."""
    return (type(layer).forward is Conv2D.forward and type(layer).backward is Conv2D.backward
            and layer.built and layer.kernel_size == (3, 3) and layer.strides == (1, 1)
            and layer.activation_forward is linear and x.ndim == 4 and x.dtype == layer.dtype
            and x.shape[3] == layer.params["kernel"].shape[2])


# The forward takes F(2x2) at most: its output feeds the loss and every BN's
# batch statistics, and F(4x4)'s float32 rounding (kernels/winograd.py) made a
# training forward's ResNet-50 logits 2.7e-5 (relative) from the plain path's,
# F(2x2) 9.8e-6 (plain float32 itself is 1.4e-5 from float64). dW and dx, which
# no later value is computed from, take F(4x4) where it pays (80 ms of a 5.4 s
# step is what the forward gives up).
FORWARD_TILE_SIZE = 2


def conv_forward(layer, x):
    """(y, cache) as ``layer.forward(x)``, z by Winograd where it pays."""
    pads, out_size = layer.pads(x.shape)
    kernel = layer.params["kernel"]
    m = conv_tile_size(layer, (x.shape[0], *out_size), *kernel.shape[2:])
    if m is None:
        return layer.forward(x, training=True)
    m = min(m, FORWARD_TILE_SIZE)
    bias = layer.params["bias"] if layer.use_bias else no_bias(kernel)
    z = kernels.winograd_conv3x3(x, transform_kernel(kernel, m), pads, out_size, bias, None, False)
    return z, (x, None)                      # the layer's cache: no activation, y not kept


def conv_backward(layer, dz, cache, input_grad=True):
    """dL/dx as ``layer.backward(dz, cache, input_grad=input_grad)``, filling the
    same gradients: dW and dx by Winograd where both pay, db as the layer does."""
    x, _ = cache
    pads, out_size = layer.pads(x.shape)
    kernel = layer.params["kernel"]
    m = conv_tile_size(layer, (x.shape[0], *out_size), *kernel.shape[2:])
    m_dx = conv_tile_size(layer, x.shape, kernel.shape[3], kernel.shape[2]) if input_grad else None
    if m is None or (input_grad and m_dx is None) or dz.shape != (x.shape[0], *out_size, kernel.shape[3]):
        return layer.backward(dz, cache, input_grad=input_grad)        # it names a wrong shape
    layer.add_grad("kernel", kernels.winograd_kernel_gradient(x, dz, pads, m))
    if layer.use_bias:
        layer.add_grad("bias", kernels.column_sums(dz.reshape(-1, kernel.shape[3])))
    if not input_grad:
        return None
    (top, bottom), (left, right) = pads
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)          # W[2 - i, 2 - j, f, c]
    return kernels.winograd_conv3x3(dz, transform_kernel(flipped, m_dx),
                                    ((2 - top, 2 - bottom), (2 - left, 2 - right)), x.shape[1:3],
                                    no_bias(flipped), None, False)


def no_bias(kernel):
    return get_array_module(kernel).zeros(kernel.shape[-1], kernel.dtype)


# --- BatchNormalization + ReLU -------------------------------------------------------------
def bn_relu_pairs(model):
    """{id(node): twin forward} for every BN node of ``model`` whose output only a
    ReLU of its own float type reads (and is no model output; a ReLU of another
    type casts), and for that ReLU node."""
    twins = {}
    for node in model.layer_calls():
        readers = model.readers(node)
        if (type(node.layer) is BatchNormalization and node.layer.built and len(readers) == 1
                and type(readers[0].layer).forward is Activation.forward
                and readers[0].layer.activation == "relu" and readers[0].layer.dtype == node.layer.dtype
                and all(node is not out for out in model.outputs)):
            twins[id(node)], twins[id(readers[0])] = bn_relu_forward, relu_applied
    return twins


def bn_relu_forward(bn, x, training):
    """(relu(bn(x)), cache) in one normalize pass; the layer's own forward where
    x is not what it can take as it is (it casts, or names what is wrong)."""
    if not (x.ndim == bn.input_ndim and x.dtype == bn.dtype
            and x.shape[bn.channel_axis] == bn.params["gamma"].shape[0]):
        y, cache = bn.forward(x, training)
        return kernels.relu(y), BnReluCache(*cache)
    mean, inv_std, batch_stats = bn.statistics(x, training)
    xhat, y = kernels.normalize(x, mean, inv_std, bn.params["gamma"], bn.params["beta"],
                                bn.channel_axis, relu=True)
    return y, BnReluCache(xhat, inv_std, batch_stats)


def relu_applied(relu, y, training):
    """The pair's ReLU node: its input is relu'd already."""
    return y, RELU_APPLIED


RELU_APPLIED = "relu applied by the batch norm before it"


class BnReluCache:
    """A fused pair's BN cache: the layer's own (xhat, s, batch statistics?)."""

    def __init__(self, xhat, inv_std, batch_stats):
        self.xhat, self.inv_std, self.batch_stats = xhat, inv_std, batch_stats

    def backward(self, bn, dy):
        """BN's backward (layers/normalization.py) on dy through the ReLU's mask."""
        xhat, axis = self.xhat, bn.channel_axis
        if tuple(dy.shape) != xhat.shape:                       # the layer names the shapes
            return bn.backward(dy, (xhat, self.inv_std, self.batch_stats))
        relu_of = (bn.params["gamma"], bn.params["beta"])
        dbeta, dgamma = kernels.channel_sums(dy, xhat, axis, relu_of)
        bn.add_grad("beta", dbeta)
        bn.add_grad("gamma", dgamma)
        scale = bn.params["gamma"] * self.inv_std
        m = xhat.size // xhat.shape[axis]
        if not self.batch_stats:                  # moving statistics: dx = gamma s dy
            return kernels.batch_norm_dx(dy, xhat, scale, 0 * scale, 0 * scale, axis, relu_of)
        return kernels.batch_norm_dx(dy, xhat, scale, dbeta / m, dgamma / m, axis, relu_of)
