"""Loop-by-loop convolution and pooling, step-by-step batch normalisation:
the definitions, written to be read.

These are slow on purpose.  Each output pixel is computed by its own loop
iteration straight from the formula, and batch norm goes through its
computational graph one node at a time, forward and back, so they are easy
to check by eye; the tests then hold the fast versions to these.  NumPy
only, channels-last (N, H, W, C) data and (kh, kw, C_in, C_out) kernels,
Keras's 'valid'/'same'.
"""
import numpy as np

from .padding import crop_2d, pad_2d, window_padding_2d


def conv2d_forward(x, kernel, bias, strides=(1, 1), padding="valid"):
    """y[n, oh, ow, f] = bias[f] + sum_{i, j, c} xpad[n, oh*sh + i, ow*sw + j, c] * kernel[i, j, c, f]."""
    kh, kw, _, filters = kernel.shape
    pads, (out_h, out_w) = window_padding_2d(x.shape[1], x.shape[2], (kh, kw), strides, padding)
    xpad = pad_2d(x, pads)
    y = np.zeros((x.shape[0], out_h, out_w, filters), dtype=x.dtype)
    for n in range(x.shape[0]):
        for oh in range(out_h):
            for ow in range(out_w):
                h0, w0 = oh * strides[0], ow * strides[1]
                window = xpad[n, h0:h0 + kh, w0:w0 + kw, :]
                for f in range(filters):
                    y[n, oh, ow, f] = np.sum(window * kernel[:, :, :, f])
                    if bias is not None:
                        y[n, oh, ow, f] += bias[f]
    return y


def conv2d_backward(x, kernel, dy, strides=(1, 1), padding="valid"):
    """(dx, dkernel, dbias) for dy = dL/dy, by the chain rule term by term.

    Every product xpad[.., h0+i, w0+j, c] * kernel[i, j, c, f] in the forward
    sum sends dy[n, oh, ow, f] * kernel[i, j, c, f] to the input pixel and
    dy[n, oh, ow, f] * xpad[..] to the kernel entry.
    """
    kh, kw, _, filters = kernel.shape
    pads, (out_h, out_w) = window_padding_2d(x.shape[1], x.shape[2], (kh, kw), strides, padding)
    xpad = pad_2d(x, pads)
    dxpad = np.zeros_like(xpad)
    dkernel = np.zeros_like(kernel)
    for n in range(x.shape[0]):
        for oh in range(out_h):
            for ow in range(out_w):
                h0, w0 = oh * strides[0], ow * strides[1]
                for f in range(filters):
                    g = dy[n, oh, ow, f]
                    dxpad[n, h0:h0 + kh, w0:w0 + kw, :] += g * kernel[:, :, :, f]
                    dkernel[:, :, :, f] += g * xpad[n, h0:h0 + kh, w0:w0 + kw, :]
    return crop_2d(dxpad, pads), dkernel, dy.sum(axis=(0, 1, 2))


def _pool_windows(x, pool_size, strides, padding):
    """Yield (n, oh, ow, rows, cols): the window of each output pixel, clipped to
    the real input, because 'same' pooling ignores the padding (Keras's rule)."""
    pads, (out_h, out_w) = window_padding_2d(x.shape[1], x.shape[2], pool_size, strides, padding)
    (top, _), (left, _) = pads
    for n in range(x.shape[0]):
        for oh in range(out_h):
            for ow in range(out_w):
                h0, w0 = oh * strides[0] - top, ow * strides[1] - left
                rows = slice(max(h0, 0), min(h0 + pool_size[0], x.shape[1]))
                cols = slice(max(w0, 0), min(w0 + pool_size[1], x.shape[2]))
                yield n, oh, ow, rows, cols


def _pool_forward(x, reduce, pool_size, strides, padding):
    """y[n, oh, ow, c] = reduce(x[n, rows, cols, c]) over each window."""
    _, out = window_padding_2d(x.shape[1], x.shape[2], pool_size, strides, padding)
    y = np.zeros((x.shape[0], *out, x.shape[3]), dtype=x.dtype)
    for n, oh, ow, rows, cols in _pool_windows(x, pool_size, strides, padding):
        y[n, oh, ow, :] = reduce(x[n, rows, cols, :], axis=(0, 1))
    return y


def max_pool_forward(x, pool_size=(2, 2), strides=(2, 2), padding="valid"):
    """y[n, oh, ow, c] = max of x[n, rows, cols, c] over the window."""
    return _pool_forward(x, np.max, pool_size, strides, padding)


def max_pool_backward(x, dy, pool_size=(2, 2), strides=(2, 2), padding="valid"):
    """dx: each dy goes to the (first) maximum of its window, summed over windows."""
    dx = np.zeros_like(x)
    for n, oh, ow, rows, cols in _pool_windows(x, pool_size, strides, padding):
        for c in range(x.shape[3]):
            window = x[n, rows, cols, c]
            i, j = np.unravel_index(np.argmax(window), window.shape)
            dx[n, rows.start + i, cols.start + j, c] += dy[n, oh, ow, c]
    return dx


def avg_pool_forward(x, pool_size=(2, 2), strides=(2, 2), padding="valid"):
    """y[n, oh, ow, c] = mean of x[n, rows, cols, c] over the (clipped) window."""
    return _pool_forward(x, np.mean, pool_size, strides, padding)


def avg_pool_backward(x, dy, pool_size=(2, 2), strides=(2, 2), padding="valid"):
    """dx: each dy is shared equally by the m pixels of its window (dy / m each)."""
    dx = np.zeros_like(x)
    for n, oh, ow, rows, cols in _pool_windows(x, pool_size, strides, padding):
        m = (rows.stop - rows.start) * (cols.stop - cols.start)
        dx[n, rows, cols, :] += dy[n, oh, ow, :] / m
    return dx


def batch_norm_forward(x, gamma, beta, epsilon=1e-3):
    """Training-mode batch norm, one node of its graph per line: (y, cache).

    Per channel c (the last axis), over the m values of every other axis:

        mu      = mean(x)                  the batch mean
        xc      = x - mu                   centred
        var     = mean(xc ** 2)            biased variance (1/m), as Keras
        inv_std = 1 / sqrt(var + epsilon)
        xhat    = xc * inv_std             zero mean, unit variance
        y       = gamma * xhat + beta      the learnt scale and shift

    The cache is the graph's inner nodes, which backward walks in reverse.
    """
    axes = tuple(range(x.ndim - 1))
    mu = x.mean(axis=axes)
    xc = x - mu
    var = (xc ** 2).mean(axis=axes)
    inv_std = 1.0 / np.sqrt(var + epsilon)
    xhat = xc * inv_std
    y = gamma * xhat + beta
    return y, (xc, var, inv_std, xhat, gamma, epsilon)


def batch_norm_backward(dy, cache):
    """(dx, dgamma, dbeta) for dy = dL/dy, node by node from y back to x.

    Each line is d(node) = sum over the nodes it feeds of d(child) times the
    local derivative d(child)/d(node).  A per-channel node (mu, var, inv_std)
    feeds all m values of its channel, so its gradient sums over them; a node
    that feeds two children (xc feeds xhat and var; x feeds xc and mu) sums
    the two paths.  Summing the paths by hand gives the layer's one-line
    dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat)).
    """
    xc, var, inv_std, xhat, gamma, epsilon = cache
    axes = tuple(range(dy.ndim - 1))
    m = dy.size // dy.shape[-1]                 # values per channel
    dbeta = dy.sum(axis=axes)                   # y = gamma * xhat + beta:  dy/dbeta = 1
    dgamma = (dy * xhat).sum(axis=axes)         #                           dy/dgamma = xhat
    dxhat = dy * gamma                          #                           dy/dxhat = gamma
    dinv_std = (dxhat * xc).sum(axis=axes)      # xhat = xc * inv_std:      dxhat/dinv_std = xc
    dvar = dinv_std * -0.5 * (var + epsilon) ** -1.5   # inv_std = (var + eps)^(-1/2):
    #                                                    dinv_std/dvar = -(var + eps)^(-3/2) / 2
    dxc = dxhat * inv_std + dvar * 2 * xc / m   # dxhat/dxc = inv_std; var = mean(xc^2): 2 xc / m
    dmu = -dxc.sum(axis=axes)                   # xc = x - mu:              dxc/dmu = -1
    dx = dxc + dmu / m                          # dxc/dx = 1; mu = mean(x): dmu/dx = 1 / m
    return dx, dgamma, dbeta
