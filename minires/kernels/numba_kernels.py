"""The same kernels as im2col.py and pooling.py, compiled by Numba for the CPU.

Same signatures, same results (tests check them against the NumPy versions
and the loop references). The loops are the textbook ones; what makes them
fast is compilation and ``prange``, which splits the outer loop over the
cores. Each kernel is written so that no two iterations of that outer loop
write the same element:
  - im2col and max-pool forward write output row (n, oh) only;
  - col2im and max-pool backward are split by INPUT row (n, h): the thread
    that owns row h adds in every window entry that read it, instead of each
    window scattering into rows that other threads might be writing (a race).
"""
import os

# Numba's OpenMP threads spin for a while after each kernel, as OpenBLAS's do
# after each matrix product; on a few cores the two pools then fight over them
# (a ResNet-50 step measured up to 2x slower). Sleeping threads avoid that; a
# user's own setting wins. Read by OpenMP when it starts, so set before Numba runs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from .im2col import output_size


def im2col(x, kh, kw, sh, sw):
    """x: padded (N, H, W, C) -> cols (N, OH, OW, kh, kw, C); see im2col.im2col."""
    n, height, width, channels = x.shape
    out_h, out_w = output_size(height, width, kh, kw, sh, sw)
    cols = np.empty((n, out_h, out_w, kh, kw, channels), dtype=x.dtype)
    _im2col(np.ascontiguousarray(x), cols, sh, sw)
    return cols


@njit(parallel=True, cache=True, error_model="numpy")
def _im2col(x, cols, sh, sw):
    n, out_h, out_w, kh, kw, _ = cols.shape
    for row in prange(n * out_h):
        b, oh = row // out_h, row % out_h
        for ow in range(out_w):
            for i in range(kh):
                for j in range(kw):
                    for c in range(x.shape[3]):
                        cols[b, oh, ow, i, j, c] = x[b, oh * sh + i, ow * sw + j, c]


def col2im(cols, padded_shape, sh, sw):
    """cols (N, OH, OW, kh, kw, C) -> (N, H, W, C): see im2col.col2im."""
    dx = np.zeros(padded_shape, dtype=cols.dtype)
    _col2im(np.ascontiguousarray(cols), dx, sh, sw)
    return dx


@njit(parallel=True, cache=True, error_model="numpy")
def _col2im(cols, dx, sh, sw):
    n, height, _, channels = dx.shape
    _, out_h, out_w, kh, kw, _ = cols.shape
    for row in prange(n * height):
        b, h = row // height, row % height
        for i in range(kh):                      # the window rows that read input row h
            if h - i < 0 or (h - i) % sh != 0 or (h - i) // sh >= out_h:
                continue
            oh = (h - i) // sh
            for ow in range(out_w):              # within row h this thread is alone
                for j in range(kw):
                    w = ow * sw + j
                    for c in range(channels):
                        dx[b, h, w, c] += cols[b, oh, ow, i, j, c]


def max_pool_forward(x, ph, pw, sh, sw):
    """x: padded (N, H, W, C) -> (out, argmax), as pooling.max_pool_forward."""
    n, height, width, channels = x.shape
    out_h, out_w = output_size(height, width, ph, pw, sh, sw)
    out = np.empty((n, out_h, out_w, channels), dtype=x.dtype)
    argmax = np.empty((n, out_h, out_w, channels), dtype=np.int64)
    _max_pool_forward(np.ascontiguousarray(x), out, argmax, ph, pw, sh, sw)
    return out, argmax


@njit(parallel=True, cache=True, error_model="numpy")
def _max_pool_forward(x, out, argmax, ph, pw, sh, sw):
    n, out_h, out_w, channels = out.shape
    for row in prange(n * out_h):
        b, oh = row // out_h, row % out_h
        for ow in range(out_w):
            for c in range(channels):
                best, where = x[b, oh * sh, ow * sw, c], 0
                for i in range(ph):
                    for j in range(pw):
                        value = x[b, oh * sh + i, ow * sw + j, c]
                        if value > best:             # strict: the first maximum wins ties
                            best, where = value, i * pw + j
                out[b, oh, ow, c], argmax[b, oh, ow, c] = best, where


def max_pool_backward(g, argmax, padded_shape, ph, pw, sh, sw):
    """Gradient of the padded input: each g goes to its window's winner."""
    dx = np.zeros(padded_shape, dtype=g.dtype)
    _max_pool_backward(np.ascontiguousarray(g), np.ascontiguousarray(argmax), dx, ph, pw, sh, sw)
    return dx


@njit(parallel=True, cache=True, error_model="numpy")
def _max_pool_backward(g, argmax, dx, ph, pw, sh, sw):
    n, height, _, channels = dx.shape
    _, out_h, out_w, _ = g.shape
    for row in prange(n * height):
        b, h = row // height, row % height
        for i in range(ph):
            if h - i < 0 or (h - i) % sh != 0 or (h - i) // sh >= out_h:
                continue
            oh = (h - i) // sh
            for ow in range(out_w):
                for c in range(channels):
                    winner = argmax[b, oh, ow, c]
                    if winner // pw == i:
                        dx[b, h, ow * sw + winner % pw, c] += g[b, oh, ow, c]
