"""Max-pooling kernels built on im2col: find each window's maximum, and route
the gradient back to it.

max y = max_k x_k has dy/dx_k = 1 for the winning k and 0 for the others, so
backward puts each output gradient on the position that won the forward pass
(the first one on ties, as argmax does) and col2im adds overlapping windows.
"""
from ..backend import get_array_module
from .im2col import col2im, im2col


def max_pool_forward(x, ph, pw, sh, sw):
    """x: padded (N, H, W, C) -> (out (N, OH, OW, C), argmax (N, OH, OW, C)).

    argmax holds the flat position i*pw + j of the maximum inside its window.
    """
    xp = get_array_module(x)
    cols = im2col(x, ph, pw, sh, sw)
    n, out_h, out_w = cols.shape[:3]
    windows = cols.reshape(n, out_h, out_w, ph * pw, -1)
    argmax = windows.argmax(axis=3)
    out = xp.take_along_axis(windows, argmax[:, :, :, None, :], axis=3)[:, :, :, 0, :]
    return out, argmax


def max_pool_backward(g, argmax, padded_shape, ph, pw, sh, sw):
    """g, argmax: (N, OH, OW, C) -> gradient of the padded input, ``padded_shape``."""
    xp = get_array_module(g)
    positions = xp.arange(ph * pw).reshape(1, 1, 1, -1, 1)
    winner = positions == argmax[:, :, :, None, :]             # (N, OH, OW, ph*pw, C)
    cols = xp.where(winner, g[:, :, :, None, :], xp.zeros((), dtype=g.dtype))
    n, out_h, out_w, _ = g.shape
    return col2im(cols.reshape(n, out_h, out_w, ph, pw, -1), padded_shape, sh, sw)
