"""The same kernels as slicing.py, compiled by Numba for the CPU.

Same signatures, same results (tests check them against the NumPy versions
and the loop references). The loops are the textbook ones; what makes them
fast is compilation and ``prange``, which splits the outer loop over the
cores. Each kernel is written so that no two iterations of that outer loop
write the same element:
  - im2col and max-pool forward write output row (n, oh) only;
  - col2im and max-pool backward are split by INPUT row (n, h): the thread
    that owns row h adds in every window entry that read it, instead of each
    window scattering into rows that other threads might be writing (a race).
The threads are OpenMP's: the dispatcher starts them (backend.start_numba_threads) so that
they sleep when idle and leave the cores to OpenBLAS's.

Numba compiles float32 and float64 loops only (its CPU float16 is not
implemented): the sliding-window kernels hand other types to slicing.py.
"""
import numpy as np
from numba import njit, prange

from . import slicing, winograd
from .slicing import output_size

_COMPILED_FLOATS = (np.float32, np.float64)


def im2col(x, kh, kw, sh, sw):
    """x: padded (N, H, W, C) -> cols (N, OH, OW, kh, kw, C); see slicing.im2col."""
    if x.dtype not in _COMPILED_FLOATS:
        return slicing.im2col(x, kh, kw, sh, sw)
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
    """cols (N, OH, OW, kh, kw, C) -> (N, H, W, C): see slicing.col2im."""
    if cols.dtype not in _COMPILED_FLOATS:
        return slicing.col2im(cols, padded_shape, sh, sw)
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
    """x: padded (N, H, W, C) -> (out, argmax), as slicing.max_pool_forward."""
    if x.dtype not in _COMPILED_FLOATS:
        return slicing.max_pool_forward(x, ph, pw, sh, sw)
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
            # the channels innermost, the window's entries in order: contiguous
            # reads that vectorise; position 0 starts every channel's maximum
            for c in range(channels):
                out[b, oh, ow, c], argmax[b, oh, ow, c] = x[b, oh * sh, ow * sw, c], 0
            for i in range(ph):
                for j in range(pw):
                    for c in range(channels):
                        value = x[b, oh * sh + i, ow * sw + j, c]
                        if _beats(value, out[b, oh, ow, c]):
                            out[b, oh, ow, c], argmax[b, oh, ow, c] = value, i * pw + j


@njit(cache=True)
def _beats(value, best):
    """Whether ``value`` takes a window's maximum from ``best``, as np.argmax ranks
    values: a larger one does, an equal one does not (the first maximum wins ties),
    and a NaN beats every number (``value > best`` alone is False for a NaN, which
    would drop it). Nothing beats a NaN, so the first NaN of a window wins."""
    return value > best or (np.isnan(value) and not np.isnan(best))


def max_pool_backward(g, argmax, padded_shape, ph, pw, sh, sw):
    """Gradient of the padded input: each g goes to its window's winner."""
    if g.dtype not in _COMPILED_FLOATS:
        return slicing.max_pool_backward(g, argmax, padded_shape, ph, pw, sh, sw)
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
                for j in range(pw):              # the channels innermost: contiguous, vectorised
                    for c in range(channels):
                        if argmax[b, oh, ow, c] == i * pw + j:
                            dx[b, h, ow * sw + j, c] += g[b, oh, ow, c]


# --- whole-activation passes (channelwise.py): channel last, viewed as (rows, C) ---------
# Each prange iteration owns a block of rows. Reductions keep one float64 partial
# sum per block and channel (more accurate than float32, and race-free), added
# up at the end; the elementwise passes write only their own rows.
_ROWS_PER_BLOCK = 512


def channel_moments(x, channel_axis):
    """One pass, where channelwise.py takes two: the sums of d = x - shift and
    of d^2 in float64, shift being the first row, give mean = shift + S1 / n and
    var = S2 / n - (S1 / n)^2. Shifting by a value of the data keeps (S1 / n)^2
    near var, so the subtraction loses few of float64's digits; the second
    pass over the data (a training step reads each BN input once less) is not
    needed for float32 accuracy."""
    rows = _rows(x)
    shift = rows[0].astype(np.float64)
    s1, s2 = _block_shifted_sums(rows, shift).sum(axis=0) / rows.shape[0]
    variance = np.maximum(s2 - s1 * s1, 0.0)
    return (shift + s1).astype(x.dtype), variance.astype(x.dtype)


def normalize(x, mean, inv_std, gamma, beta, channel_axis, relu=False):
    xhat, y = np.empty_like(x), np.empty_like(x)
    _normalize(_rows(x), mean, inv_std, gamma, beta, relu, _rows(xhat), _rows(y))
    return xhat, y


def channel_sums(dy, xhat, channel_axis, relu_of=None):
    sums = _block_dy_sums(_rows(dy), _rows(xhat), *_mask_arguments(relu_of, dy)).sum(axis=0)
    return sums[0].astype(dy.dtype), sums[1].astype(dy.dtype)


def batch_norm_dx(dy, xhat, scale, mean_dy, mean_dy_xhat, channel_axis, relu_of=None):
    dx = np.empty_like(dy)
    _batch_norm_dx(_rows(dy), _rows(xhat), scale, mean_dy, mean_dy_xhat, *_mask_arguments(relu_of, dy),
                   _rows(dx))
    return dx


def _mask_arguments(relu_of, dy):
    """(masked, gamma, beta) for the loops below: relu_of, or no mask (zeros, unread)."""
    if relu_of is None:
        unread = np.zeros(dy.shape[-1], dy.dtype)
        return False, unread, unread
    return True, *relu_of


def relu(z):
    y = np.empty_like(z)
    _relu(z.reshape(-1), y.reshape(-1))
    return y


def relu_backward(dy, y):
    dz = np.empty_like(dy)
    _relu_backward(dy.reshape(-1), y.reshape(-1), dz.reshape(-1))
    return dz


def add_relu_(z, bias, residual, relu):
    has_residual = residual is not None
    _add_relu(_rows(z), bias, _rows(residual if has_residual else z[:0]), has_residual, relu)
    return z


def _rows(x):
    return x.reshape(-1, x.shape[-1])


@njit(cache=True)
def _block_count(n_rows):
    return (n_rows + _ROWS_PER_BLOCK - 1) // _ROWS_PER_BLOCK


@njit(cache=True)
def _block_rows(block, n_rows):
    """The rows of one block: range(start, stop)."""
    return range(block * _ROWS_PER_BLOCK, min(n_rows, (block + 1) * _ROWS_PER_BLOCK))


@njit(parallel=True, cache=True, error_model="numpy")
def _block_shifted_sums(rows, shift):
    """Partial sums of d = rows - shift and of d^2, one pair of lines per block of rows."""
    partial = np.zeros((_block_count(rows.shape[0]), 2, rows.shape[1]))
    for block in prange(partial.shape[0]):
        for r in _block_rows(block, rows.shape[0]):
            for c in range(rows.shape[1]):
                d = rows[r, c] - shift[c]
                partial[block, 0, c] += d
                partial[block, 1, c] += d * d
    return partial


@njit(cache=True, inline="always")
def _masked(dy, xhat, masked, gamma, beta):
    """dy, or 0 where a fused ReLU's input gamma * xhat + beta was not positive
    (channelwise.relu_mask: normalize's own operations, so the same values)."""
    return dy if not masked or xhat * gamma + beta > 0 else dy * 0     # * 0: NaN stays NaN


@njit(parallel=True, cache=True, error_model="numpy")
def _block_dy_sums(dy, xhat, masked, gamma, beta):
    partial = np.zeros((_block_count(dy.shape[0]), 2, dy.shape[1]))
    for block in prange(partial.shape[0]):
        for r in _block_rows(block, dy.shape[0]):
            for c in range(dy.shape[1]):
                g = _masked(dy[r, c], xhat[r, c], masked, gamma[c], beta[c])
                partial[block, 0, c] += g
                partial[block, 1, c] += g * xhat[r, c]
    return partial


@njit(parallel=True, cache=True, error_model="numpy")
def _normalize(x, mean, inv_std, gamma, beta, relu, xhat, y):
    for r in prange(x.shape[0]):
        for c in range(x.shape[1]):
            value = (x[r, c] - mean[c]) * inv_std[c]
            xhat[r, c] = value
            value = value * gamma[c] + beta[c]
            y[r, c] = _relu_value(value) if relu else value


@njit(parallel=True, cache=True, error_model="numpy")
def _batch_norm_dx(dy, xhat, scale, mean_dy, mean_dy_xhat, masked, gamma, beta, dx):
    for r in prange(dy.shape[0]):
        for c in range(dy.shape[1]):
            g = _masked(dy[r, c], xhat[r, c], masked, gamma[c], beta[c])
            dx[r, c] = scale[c] * (g - mean_dy[c] - xhat[r, c] * mean_dy_xhat[c])


@njit(cache=True)
def _relu_value(value):
    return 0 if value <= 0 else value     # as np.maximum: -0.0 gives +0.0, NaN stays NaN


@njit(parallel=True, cache=True, error_model="numpy")
def _relu(z, y):
    for i in prange(z.shape[0]):
        y[i] = _relu_value(z[i])


@njit(parallel=True, cache=True, error_model="numpy")
def _relu_backward(dy, y, dz):
    for i in prange(dy.shape[0]):
        dz[i] = dy[i] * (y[i] > 0)                 # a multiply, as NumPy's: NaN * 0 stays NaN


@njit(parallel=True, cache=True, error_model="numpy")
def _add_relu(z, bias, residual, has_residual, relu):
    for r in prange(z.shape[0]):
        for c in range(z.shape[1]):
            value = z[r, c] + bias[c]
            if has_residual:
                value += residual[r, c]
            z[r, c] = _relu_value(value) if relu else value


# --- Winograd F(m x m, 3x3) transforms (winograd.py): B^T d B and A^T M A, m = 2 or 4 --------
# The 2-D transforms are 1-D ones down the columns, then along the rows; the
# 1-D ones are written out (sharing sums) for a row of channels at once. Every
# array is viewed as (rows, channels), C-ordered, and a 1-D transform reads
# every step-th row from a start: with the channels' unit stride known, the
# compiler vectorises the channel loop (through strided views it does not:
# the transforms took 2-4x longer).
def input_tiles(x, pads, out_size, m):
    tiles_h, tiles_w = winograd.tile_counts(*out_size, winograd.checked_tile_size(m))
    v = np.empty(((m + 2) ** 2, x.shape[0] * tiles_h * tiles_w, x.shape[3]), dtype=x.dtype)
    _input_tiles(np.ascontiguousarray(x), pads[0][0], pads[1][0], tiles_h, tiles_w, m, _rows(v))
    return v


@njit(parallel=True, cache=True, error_model="numpy")
def _input_tiles(x, top, left, tiles_h, tiles_w, m, v):
    """Copies each (m+2)x(m+2) tile from the unpadded x (zeros outside: no
    padded copy of x) into d, then t = B^T d down its columns and v = t B
    along its rows; v is V viewed as ((m+2)^2 * tiles, C)."""
    n, height, width, channels = x.shape
    size = m + 2
    tiles = v.shape[0] // (size * size)
    for row in prange(n * tiles_h):
        b, th = row // tiles_h, row % tiles_h
        d = np.empty((size * size, channels), dtype=x.dtype)    # this thread's own tile, row i*size + j
        t = np.empty((size * size, channels), dtype=x.dtype)
        for tw in range(tiles_w):
            tile = row * tiles_w + tw
            for i in range(size):
                h = m * th + i - top
                for j in range(size):
                    w = m * tw + j - left
                    if 0 <= h < height and 0 <= w < width:
                        d[i * size + j, :] = x[b, h, w, :]
                    else:
                        d[i * size + j, :] = 0
            for j in range(size):                                # column j: rows j, j + size, ...
                _b_t_times(m, d, j, size, t, j, size)
            for i in range(size):                                # row i of t -> V[size*i + k, tile]
                _b_t_times(m, t, i * size, 1, v, i * size * tiles + tile, tiles)


@njit(cache=True, inline="always")
def _b_t_times(m, d, start, step, out, out_start, out_step):
    """out[out_start + k*out_step] = sum_i B^T[k, i] d[start + i*step], every
    channel: winograd.B_T[m] written out."""
    if m == 2:
        for c in range(d.shape[1]):
            d0, d1, d2, d3 = d[start, c], d[start + step, c], d[start + 2 * step, c], d[start + 3 * step, c]
            out[out_start, c] = d0 - d2
            out[out_start + out_step, c] = d1 + d2
            out[out_start + 2 * out_step, c] = d2 - d1
            out[out_start + 3 * out_step, c] = d1 - d3
        return
    for c in range(d.shape[1]):
        d0, d1, d2 = d[start, c], d[start + step, c], d[start + 2 * step, c]
        d3, d4, d5 = d[start + 3 * step, c], d[start + 4 * step, c], d[start + 5 * step, c]
        out[out_start, c] = 4 * d0 - 5 * d2 + d4
        out[out_start + out_step, c] = d3 + d4 - 4 * (d1 + d2)
        out[out_start + 2 * out_step, c] = d4 - d3 + 4 * (d1 - d2)
        out[out_start + 3 * out_step, c] = d4 - d2 + 2 * (d3 - d1)
        out[out_start + 4 * out_step, c] = d4 - d2 - 2 * (d3 - d1)
        out[out_start + 5 * out_step, c] = 4 * d1 - 5 * d3 + d5


@njit(cache=True, inline="always")
def _a_t_times(m, p, start, step, out, out_start):
    """out[out_start + k] = sum_a A^T[k, a] p[start + a*step], every filter:
    winograd.A_T[m] written out."""
    if m == 2:
        for f in range(p.shape[1]):
            p0, p1, p2, p3 = p[start, f], p[start + step, f], p[start + 2 * step, f], p[start + 3 * step, f]
            out[out_start, f] = p0 + p1 + p2
            out[out_start + 1, f] = p1 - p2 - p3
        return
    for f in range(p.shape[1]):
        p0, p1, p2 = p[start, f], p[start + step, f], p[start + 2 * step, f]
        p3, p4, p5 = p[start + 3 * step, f], p[start + 4 * step, f], p[start + 5 * step, f]
        out[out_start, f] = p0 + (p1 + p2) + (p3 + p4)
        out[out_start + 1, f] = (p1 - p2) + 2 * (p3 - p4)
        out[out_start + 2, f] = (p1 + p2) + 4 * (p3 + p4)
        out[out_start + 3, f] = (p1 - p2) + 8 * (p3 - p4) + p5


def output_tiles(products, bias, residual, relu, z, m):
    has_residual = residual is not None
    tiles_h, tiles_w = winograd.tile_counts(*z.shape[1:3], winograd.checked_tile_size(m))
    _output_tiles(_rows(np.ascontiguousarray(products)), bias, residual if has_residual else z[:0],
                  has_residual, relu, tiles_h, tiles_w, m, z)


@njit(parallel=True, cache=True, error_model="numpy")
def _output_tiles(products, bias, residual, has_residual, relu, tiles_h, tiles_w, m, z):
    """Per tile t = A^T M down the columns, then y = t A row by row, + bias
    [+ residual] and ReLU, writing only the pixels that lie inside the output
    (not a spare tile's). products is M viewed as ((m+2)^2 * tiles, F)."""
    n, out_h, out_w, filters = z.shape
    size = m + 2
    tiles = products.shape[0] // (size * size)
    for row in prange(n * tiles_h):
        b, th = row // tiles_h, row % tiles_h
        t = np.empty((m * size, filters), dtype=products.dtype)     # (A^T M)[i, k] in row k*m + i
        y = np.empty((m, filters), dtype=products.dtype)            # one row of the output tile
        for tw in range(tiles_w):
            tile = row * tiles_w + tw
            for k in range(size):                                    # column k: M[k, tile], M[size + k, tile], ...
                _a_t_times(m, products, k * tiles + tile, size * tiles, t, k * m)
            for i in range(min(m, out_h - m * th)):
                _a_t_times(m, t, i, m, y, 0)
                h = m * th + i
                for j in range(min(m, out_w - m * tw)):
                    w = m * tw + j
                    for f in range(filters):
                        value = y[j, f] + bias[f]
                        if has_residual:
                            value += residual[b, h, w, f]
                        z[b, h, w, f] = _relu_value(value) if relu else value


def gradient_tiles(dz, m):
    tiles_h, tiles_w = winograd.tile_counts(*dz.shape[1:3], winograd.checked_tile_size(m))
    grads = np.zeros(((m + 2) ** 2, dz.shape[0] * tiles_h * tiles_w, dz.shape[3]), dtype=dz.dtype)
    _gradient_tiles(np.ascontiguousarray(dz), np.asarray(winograd.A_T[m], dz.dtype), tiles_h, tiles_w,
                    _rows(grads))
    return grads


@njit(parallel=True, cache=True, error_model="numpy")
def _gradient_tiles(dz, a_t, tiles_h, tiles_w, grads):
    """Per m x m tile e of dz (zeros past its edge): t = A e down the columns,
    then A t^T along the rows, added into grads (zeros, viewed as ((m+2)^2 * tiles, F))."""
    n, out_h, out_w, filters = dz.shape
    m, size = a_t.shape
    tiles = grads.shape[0] // (size * size)
    for row in prange(n * tiles_h):
        b, th = row // tiles_h, row % tiles_h
        t = np.zeros((size * m, filters), dtype=dz.dtype)            # (A e)[k, j] in row k*m + j
        for tw in range(tiles_w):
            tile = row * tiles_w + tw
            t[:] = 0
            for i in range(min(m, out_h - m * th)):
                for j in range(min(m, out_w - m * tw)):
                    for k in range(size):
                        if a_t[i, k] != 0:
                            for f in range(filters):
                                t[k * m + j, f] += a_t[i, k] * dz[b, m * th + i, m * tw + j, f]
            for k in range(size):
                for j in range(m):
                    for q in range(size):
                        if a_t[j, q] != 0:
                            for f in range(filters):
                                grads[(k * size + q) * tiles + tile, f] += a_t[j, q] * t[k * m + j, f]


# --- a bias's gradient (channelwise.column_sums): float64 block sums, as channel_sums's ---------
def column_sums(rows):
    return _block_sums(rows).sum(axis=0).astype(rows.dtype)


@njit(parallel=True, cache=True, error_model="numpy")
def _block_sums(rows):
    """Partial sums of rows, one line per block of rows."""
    partial = np.zeros((_block_count(rows.shape[0]), rows.shape[1]))
    for block in prange(partial.shape[0]):
        for r in _block_rows(block, rows.shape[0]):
            for c in range(rows.shape[1]):
                partial[block, c] += rows[r, c]
    return partial

