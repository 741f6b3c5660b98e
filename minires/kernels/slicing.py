"""The sliding-window kernels by array slicing, NumPy or CuPy: the readable
reference that the Numba and CUDA kernels are tested against.

im2col and its adjoint col2im: turning convolution into one matrix product.

im2col copies every (kh, kw, C) window of the padded input into a row, so that
a convolution becomes ``cols.reshape(N*OH*OW, kh*kw*C) @ kernel.reshape(-1, F)``.

We loop over the kh*kw offsets of the window, not over the output pixels:
for offset (i, j), output pixel (oh, ow) reads input pixel
(oh*sh + i, ow*sw + j), so all output pixels are served by ONE strided slice
``x[:, i : i + sh*(OH-1) + 1 : sh, j : ..., :]``.  That is kh*kw vectorised
copies instead of N*OH*OW*kh*kw small ones.

Max-pooling is built on im2col: find each window's maximum, and route the
gradient back to it. max y = max_k x_k has dy/dx_k = 1 for the winning k and
0 for the others, so backward puts each output gradient on the position that
won the forward pass (the first one on ties, as argmax does) and col2im adds
overlapping windows. argmax ranks NaN above every number, so a window holding
a NaN gives NaN (as np.max does) and its first NaN wins; the Numba and CUDA
kernels follow this rule too.
"""
from ..backend import get_array_module


def output_size(height, width, kh, kw, sh, sw):
    """(OH, OW) of a window sliding over a (height, width) padded input."""
    return (height - kh) // sh + 1, (width - kw) // sw + 1


def _offset_slices(i, j, out_h, out_w, sh, sw):
    """Slices of the padded input that offset (i, j) reads for every output pixel."""
    return (slice(None), slice(i, i + sh * (out_h - 1) + 1, sh),
            slice(j, j + sw * (out_w - 1) + 1, sw), slice(None))


def im2col(x, kh, kw, sh, sw):
    """Windows of a padded input.

    x: (N, H, W, C) -> cols: (N, OH, OW, kh, kw, C), where
    cols[n, oh, ow, i, j, c] = x[n, oh*sh + i, ow*sw + j, c].
    """
    xp = get_array_module(x)
    n, height, width, channels = x.shape
    out_h, out_w = output_size(height, width, kh, kw, sh, sw)
    cols = xp.empty((n, out_h, out_w, kh, kw, channels), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = x[_offset_slices(i, j, out_h, out_w, sh, sw)]
    return cols


def col2im(cols, padded_shape, sh, sw):
    """Adjoint of im2col: add every window back to where it was read from.

    cols: (N, OH, OW, kh, kw, C) -> (N, H, W, C) of ``padded_shape``.
    An input pixel read by several overlapping windows receives the sum of
    their gradients; that sum is why backward needs col2im, not a reshape.
    """
    xp = get_array_module(cols)
    _, out_h, out_w, kh, kw, _ = cols.shape
    dx = xp.zeros(padded_shape, dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dx[_offset_slices(i, j, out_h, out_w, sh, sw)] += cols[:, :, :, i, j, :]
    return dx


def max_pool_forward(x, ph, pw, sh, sw):
    """x: padded (N, H, W, C) -> (out (N, OH, OW, C), argmax (N, OH, OW, C)).

    argmax holds the flat position i*pw + j of the maximum inside its window:
    the first maximum on ties, the first NaN if the window holds one.
    """
    xp = get_array_module(x)
    cols = im2col(x, ph, pw, sh, sw)
    n, out_h, out_w = cols.shape[:3]
    windows = cols.reshape(n, out_h, out_w, ph * pw, x.shape[3])     # not -1: N may be 0
    argmax = windows.argmax(axis=3)
    out = xp.take_along_axis(windows, argmax[:, :, :, None, :], axis=3)[:, :, :, 0, :]
    return out, argmax


def max_pool_backward(g, argmax, padded_shape, ph, pw, sh, sw):
    """g, argmax: (N, OH, OW, C) -> gradient of the padded input, ``padded_shape``."""
    xp = get_array_module(g)
    positions = xp.arange(ph * pw).reshape(1, 1, 1, -1, 1)
    winner = positions == argmax[:, :, :, None, :]             # (N, OH, OW, ph*pw, C)
    cols = xp.where(winner, g[:, :, :, None, :], xp.zeros((), dtype=g.dtype))
    n, out_h, out_w, channels = g.shape
    return col2im(cols.reshape(n, out_h, out_w, ph, pw, channels), padded_shape, sh, sw)
