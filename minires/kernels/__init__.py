"""The hot loops, kept apart from the layers: one function per operation.

Each function here is the one name and signature of its operation, and
hands the arrays to one of three implementations of it:
  - readable array code, NumPy or CuPy, the reference: slicing.py (windows:
    im2col, col2im, max pooling), channelwise.py (batch norm's passes over a
    whole activation, ReLU, the fused bias + Add + ReLU), winograd.py
    (Winograd's F(m x m, 3x3) transforms and products);
  - Numba-compiled loops (numba_kernels.py), for NumPy arrays when
    ``minires.backend.kernel_path()`` is 'numba' (the default where Numba imports);
  - CUDA kernels (cupy_kernels.py), for CuPy arrays where array code would
    take several passes.
Also here: conv2d, a convolution a chunk of images at a time (``batch_chunks``,
``backend.im2col_limit()``), 1x1 convolutions without im2col. Window kernels
take an already padded (N, H, W, C) array. A kernel never knows which layer
or op calls it; tests/test_*kernels*.py check every path against the reference.
"""
import numpy as np

from .. import backend
from ..padding import pad_2d
from . import channelwise, winograd
from . import slicing


def _numba_for(array):
    """numba_kernels when it should handle ``array``, else None."""
    if backend.kernel_path() == "numba" and backend.get_array_module(array) is np:
        from . import numba_kernels
        backend.start_numba_threads()       # once: with OpenMP's idle threads asleep
        return numba_kernels
    return None


def _compiled_for(array):
    """cupy_kernels for a CuPy array, else as _numba_for (None: the slicing kernels)."""
    if backend.device_of(array) == "cuda":
        from . import cupy_kernels
        return cupy_kernels
    return _numba_for(array)


def im2col(x, kh, kw, sh, sw):
    if (kh, kw) == (1, 1):            # a 1x1 window is the pixel itself: a view, no copy
        return x[:, ::sh, ::sw, None, None, :]
    return (_compiled_for(x) or slicing).im2col(x, kh, kw, sh, sw)


def col2im(cols, padded_shape, sh, sw):
    if cols.shape[3:5] == (1, 1) and (sh, sw) == (1, 1):
        return cols.reshape(padded_shape)
    return (_compiled_for(cols) or slicing).col2im(cols, padded_shape, sh, sw)


def batch_chunks(batch, bytes_per_item):
    """Slices of a batch small enough that one slice's im2col columns stay under
    ``backend.im2col_limit()`` (one item at least)."""
    step = max(1, backend.im2col_limit() // max(1, bytes_per_item))
    return [slice(start, min(start + step, batch)) for start in range(0, batch, step)]


def conv2d(x, kernel, pads, strides):
    """Conv2D's product without bias or activation, x (N, H, W, C) unpadded ->
    (N, OH, OW, F): pad, im2col, one matrix product, as layers/conv.py does,
    but a chunk of images at a time, so that the columns (kh*kw times larger
    than x) stay under ``backend.im2col_limit()``; written straight into z."""
    xp = backend.get_array_module(x)
    kh, kw, channels, filters = kernel.shape
    flat = kernel.reshape(-1, filters)
    (top, bottom), (left, right) = pads
    out_h, out_w = slicing.output_size(x.shape[1] + top + bottom, x.shape[2] + left + right,
                                       kh, kw, *strides)
    z = xp.empty((x.shape[0], out_h, out_w, filters), dtype=x.dtype)
    for batch in batch_chunks(x.shape[0], out_h * out_w * flat.shape[0] * x.itemsize):
        cols = im2col(pad_2d(x[batch], pads), kh, kw, *strides)
        xp.matmul(cols.reshape(-1, flat.shape[0]), flat, out=z[batch].reshape(-1, filters))
    return z


def max_pool_forward(x, ph, pw, sh, sw):
    return (_compiled_for(x) or slicing).max_pool_forward(x, ph, pw, sh, sw)


def max_pool_backward(g, argmax, padded_shape, ph, pw, sh, sw):
    return (_compiled_for(g) or slicing).max_pool_backward(g, argmax, padded_shape,
                                                                    ph, pw, sh, sw)


# --- batch norm passes and the fused bias/residual/ReLU epilogue (channelwise.py) ------------------------------------------
_COMPILED_FLOATS = (np.float32, np.float64)


def _channel_last_numba(arrays, channel_axis):
    """numba_kernels when every array is C-ordered float32/float64 with the
    channel last (the compiled loops view them as (rows, C)); else None."""
    if channel_axis == arrays[0].ndim - 1 and all(
            a.flags.c_contiguous and a.dtype in _COMPILED_FLOATS for a in arrays):
        return _numba_for(arrays[0])
    return None


def channel_moments(x, channel_axis):
    return (_channel_last_numba([x], channel_axis) or channelwise).channel_moments(x, channel_axis)


def normalize(x, mean, inv_std, gamma, beta, channel_axis, relu=False):
    return (_channel_last_numba([x], channel_axis) or channelwise).normalize(
        x, mean, inv_std, gamma, beta, channel_axis, relu)


def channel_sums(dy, xhat, channel_axis, relu_of=None):
    return (_channel_last_numba([dy, xhat], channel_axis) or channelwise).channel_sums(
        dy, xhat, channel_axis, relu_of)


def batch_norm_dx(dy, xhat, scale, mean_dy, mean_dy_xhat, channel_axis, relu_of=None):
    return (_channel_last_numba([dy, xhat], channel_axis) or channelwise).batch_norm_dx(
        dy, xhat, scale, mean_dy, mean_dy_xhat, channel_axis, relu_of)


def column_sums(rows):
    return (_channel_last_numba([rows], 1) or channelwise).column_sums(rows)


def relu(z):
    return (_channel_last_numba([z], z.ndim - 1) or channelwise).relu(z)


def relu_backward(dy, y):
    if dy.shape != y.shape:                  # broadcasting is NumPy's business
        return channelwise.relu_backward(dy, y)
    return (_channel_last_numba([dy, y], dy.ndim - 1) or channelwise).relu_backward(dy, y)


def add_relu_(z, bias, residual, relu):
    arrays = [z] if residual is None else [z, residual]
    return (_channel_last_numba(arrays, z.ndim - 1) or channelwise).add_relu_(z, bias, residual, relu)


# --- Winograd F(m x m, 3x3), m = 2 or 4: the fast paths' 3x3 stride-1 convolutions ---
def winograd_conv3x3(x, u, pads, out_size, bias, residual, relu):
    """x (N, H, W, C) unpadded, u = winograd.transform_kernel(kernel, m) ->
    relu?(conv(x) + bias [+ residual]) (N, OH, OW, F), a chunk of images at a
    time so that the transformed tiles stay under ``backend.im2col_limit()``."""
    xp = backend.get_array_module(x)
    transforms = (_channel_last_numba([x], x.ndim - 1) or winograd)
    m = winograd.output_tile_size(u)
    z = xp.empty((x.shape[0], *out_size, u.shape[2]), dtype=x.dtype)
    tiles = winograd.tile_counts(*out_size, m)
    image_bytes = u.shape[0] * tiles[0] * tiles[1] * (u.shape[1] + u.shape[2]) * x.itemsize
    for batch in batch_chunks(x.shape[0], image_bytes):
        products = xp.matmul(transforms.input_tiles(x[batch], pads, out_size, m), u)
        transforms.output_tiles(products, bias, None if residual is None else residual[batch], relu,
                                z[batch], m)
    return z


def winograd_kernel_gradient(x, dz, pads, m):
    """dL/dW (3, 3, C, F) of a 3x3 stride-1 conv of x (N, H, W, C) unpadded,
    from dz (N, OH, OW, F), by F(m x m, 3x3): the forward's M[k] = V[k] @ U[k]
    gives dU[k] = V[k]^T dM[k] (dM = winograd.gradient_tiles(dz)), summed
    over chunks of images, then dW = winograd.kernel_gradient(dU)."""
    xp = backend.get_array_module(x)
    transforms = (_channel_last_numba([x, dz], x.ndim - 1) or winograd)
    out_size = dz.shape[1:3]
    tiles = winograd.tile_counts(*out_size, m)
    image_bytes = (m + 2) ** 2 * tiles[0] * tiles[1] * (x.shape[3] + dz.shape[3]) * x.itemsize
    grads_u = xp.zeros(((m + 2) ** 2, x.shape[3], dz.shape[3]), dtype=x.dtype)
    for batch in batch_chunks(x.shape[0], image_bytes):
        v = transforms.input_tiles(x[batch], pads, out_size, m)
        grads_u += xp.matmul(v.transpose(0, 2, 1), transforms.gradient_tiles(dz[batch], m))
    return winograd.kernel_gradient(grads_u, m)


__all__ = ["im2col", "col2im", "batch_chunks", "conv2d", "max_pool_forward", "max_pool_backward",
           "channel_moments", "normalize", "channel_sums", "batch_norm_dx", "column_sums", "relu",
           "relu_backward", "add_relu_",
           "winograd_conv3x3", "winograd_kernel_gradient"]
