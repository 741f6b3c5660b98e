"""The hot loops behind conv and pooling, kept apart from the layers.

Every kernel takes an already padded (N, H, W, C) array and a window
(kh, kw) with strides (sh, sw); it never knows which layer calls it.
Two implementations share these signatures: array slicing (im2col.py,
pooling.py: NumPy or CuPy, the readable reference) and Numba-compiled loops
(numba_kernels.py, NumPy arrays only). ``minires.backend.kernel_path()``
says which one runs on the CPU; CuPy arrays always take the slicing one.
"""
import numpy as np

from .. import backend
from . import im2col as slicing_im2col
from . import pooling as slicing_pooling


def _numba_for(array):
    """numba_kernels when it should handle ``array``, else None."""
    if backend.kernel_path() == "numba" and backend.get_array_module(array) is np:
        from . import numba_kernels
        return numba_kernels
    return None


def im2col(x, kh, kw, sh, sw):
    if (kh, kw) == (1, 1):            # a 1x1 window is the pixel itself: a view, no copy
        return x[:, ::sh, ::sw, None, None, :]
    return (_numba_for(x) or slicing_im2col).im2col(x, kh, kw, sh, sw)


def col2im(cols, padded_shape, sh, sw):
    if cols.shape[3:5] == (1, 1) and (sh, sw) == (1, 1):
        return cols.reshape(padded_shape)
    return (_numba_for(cols) or slicing_im2col).col2im(cols, padded_shape, sh, sw)


def batch_chunks(batch, bytes_per_item):
    """Slices of a batch small enough that one slice's im2col columns stay under
    ``backend.im2col_limit()`` (one item at least)."""
    step = max(1, backend.im2col_limit() // max(1, bytes_per_item))
    return [slice(start, min(start + step, batch)) for start in range(0, batch, step)]


def max_pool_forward(x, ph, pw, sh, sw):
    return (_numba_for(x) or slicing_pooling).max_pool_forward(x, ph, pw, sh, sw)


def max_pool_backward(g, argmax, padded_shape, ph, pw, sh, sw):
    return (_numba_for(g) or slicing_pooling).max_pool_backward(g, argmax, padded_shape,
                                                                 ph, pw, sh, sw)


__all__ = ["im2col", "col2im", "batch_chunks", "max_pool_forward", "max_pool_backward"]
