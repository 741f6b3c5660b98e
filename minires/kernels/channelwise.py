"""Whole-activation passes of batch norm, and the fused bias + residual + ReLU
epilogue of the inference fast path, in array idioms (NumPy or CuPy).

These are memory-bound: each reads or writes every value of an activation
once per pass, and a pass costs about as much as a small matrix product. The
Numba versions (numba_kernels.py) give the same results in fewer passes, on
every core. Shapes: x, xhat, dy (..., C, ...) with the channel on
``channel_axis``; per-channel vectors (C,); "sum" is over every other axis.
"""
from ..backend import get_array_module


def channel_moments(x, channel_axis):
    """(mean, biased variance) of each channel: two passes, the second over
    x - mean, which keeps the variance accurate when the mean is large."""
    mean = x.mean(axis=_other_axes(x, channel_axis))
    centred = x - per_channel(mean, x.ndim, channel_axis)
    return mean, channel_dot(centred, centred, channel_axis) / (x.size // mean.size)


def normalize(x, mean, inv_std, gamma, beta, channel_axis, relu=False):
    """(xhat, y): xhat = (x - mean) * inv_std,  y = gamma * xhat + beta, or
    max(that, 0) if ``relu`` (a ReLU fused in: layers/normalization.py's BatchNormReLU)."""
    def channel(v):
        return per_channel(v, x.ndim, channel_axis)
    xhat = x - channel(mean)
    xhat *= channel(inv_std)              # in place: no second temporary
    y = xhat * channel(gamma)
    y += channel(beta)
    if relu:
        get_array_module(y).maximum(y, 0, out=y)
    return xhat, y


def relu_mask(dy, xhat, relu_of, channel_axis):
    """dy, or, with relu_of = (gamma, beta), dy where gamma * xhat + beta > 0 (else 0):
    the gradient through a ReLU fused after batch norm, its input recomputed from
    xhat with normalize's own operations (so the same values, to the bit)."""
    if relu_of is None:
        return dy
    gamma, beta = (per_channel(v, dy.ndim, channel_axis) for v in relu_of)
    return dy * (xhat * gamma + beta > 0)


def channel_sums(dy, xhat, channel_axis, relu_of=None):
    """(sum dy, sum dy * xhat): batch norm's dbeta and dgamma (dy through relu_mask)."""
    dy = relu_mask(dy, xhat, relu_of, channel_axis)
    return dy.sum(axis=_other_axes(dy, channel_axis)), channel_dot(dy, xhat, channel_axis)


def batch_norm_dx(dy, xhat, scale, mean_dy, mean_dy_xhat, channel_axis, relu_of=None):
    """Batch norm's input gradient in training mode, the last line of its derivation
    (layers/normalization.py): dx = gamma s * (dy - dbeta / m - xhat * dgamma / m),
    with scale = gamma s, mean_dy = dbeta / m, mean_dy_xhat = dgamma / m per channel
    (dy through relu_mask)."""
    def channel(v):
        return per_channel(v, dy.ndim, channel_axis)
    dy = relu_mask(dy, xhat, relu_of, channel_axis)
    return channel(scale) * (dy - channel(mean_dy) - xhat * channel(mean_dy_xhat))


def column_sums(rows):
    """rows (R, C) -> (C,): the sum of every column, a bias's gradient (b is added to every row)."""
    return rows.sum(axis=0)


def relu(z):
    """max(z, 0), a new array (NaN stays NaN, as np.maximum keeps it)."""
    return get_array_module(z).maximum(z, 0)


def relu_backward(dy, y):
    """dy where the output was positive, else 0 (y = relu(z) > 0 exactly when z > 0)."""
    return dy * (y > 0)


def add_relu_(z, bias, residual, relu):
    """z += bias (per channel, the last axis) [+ residual], then max(z, 0) if
    ``relu``; in place, returns z. The end of a conv or residual add in the
    inference fast path; residual may be None."""
    z += bias
    if residual is not None:
        z += residual
    if relu:
        get_array_module(z).maximum(z, 0, out=z)
    return z


def channel_dot(a, b, channel_axis):
    """sum over every axis but the channel's of a * b, without an a * b temporary."""
    xp = get_array_module(a)
    letters = "abcdefgh"[:a.ndim]
    return xp.einsum(f"{letters},{letters}->{letters[channel_axis]}", a, b)


def _other_axes(x, channel_axis):
    return tuple(axis for axis in range(x.ndim) if axis != channel_axis)


def per_channel(v, ndim, channel_axis):
    """Reshape a (C,) vector so that it broadcasts along the channel axis."""
    shape = [1] * ndim
    shape[channel_axis] = v.shape[0]
    return v.reshape(shape)
