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


# --- transposed and depthwise convolutions (layers/conv_transpose.py, layers/depthwise.py) ---
def _sliding_windows(batch, out_size, window, strides):
    """Yield (n, oh, ow, rows, cols): the slices of a padded input that output pixel (oh, ow) reads."""
    for n in range(batch):
        for oh in range(out_size[0]):
            for ow in range(out_size[1]):
                h0, w0 = oh * strides[0], ow * strides[1]
                yield n, oh, ow, slice(h0, h0 + window[0]), slice(w0, w0 + window[1])


def _transpose_pads(size, kernel, stride, padding, output_padding):
    """(before, after): the zeros Keras puts around a dilated input of ``size``
    pixels (the rule of its JAX backend, in keras/src/backend/common/backend_utils.py)."""
    if padding == "valid":
        extra = max(kernel, stride) - kernel if output_padding is None else output_padding
        return kernel - 1, kernel - 1 + extra
    total = stride + kernel - 2 if output_padding is None else kernel + kernel % 2 - 2 + output_padding
    before = min(total // 2 + total % 2, kernel - 1)
    return before, total - before


def _dilated_and_padded(x, strides, pads):
    """x with strides - 1 zero rows (columns) between its pixels, then ``pads`` of zeros."""
    n, height, width, channels = x.shape
    dilated = np.zeros((n, (height - 1) * strides[0] + 1, (width - 1) * strides[1] + 1, channels),
                       dtype=x.dtype)
    dilated[:, ::strides[0], ::strides[1], :] = x
    return pad_2d(dilated, pads)


def _transpose_setup(x, kernel, strides, padding, output_padding):
    """(xpad, flipped kernel, (OH, OW), pads) for the transposed convolution of x."""
    extras = (None, None) if output_padding is None else output_padding
    pads = tuple(_transpose_pads(size, k, s, padding, extra) for size, k, s, extra
                 in zip(x.shape[1:3], kernel.shape[:2], strides, extras))
    xpad = _dilated_and_padded(x, strides, pads)
    out_size = (xpad.shape[1] - kernel.shape[0] + 1, xpad.shape[2] - kernel.shape[1] + 1)
    return xpad, kernel[::-1, ::-1], out_size, pads


def conv2d_transpose_forward(x, kernel, bias, strides=(1, 1), padding="valid", output_padding=None):
    """Transposed convolution as a stride-1 convolution of the dilated, padded input with the
    kernel turned by 180 degrees (the 'fractionally strided' view; the layer scatters instead):

        y[n, p, q, f] = bias[f] + sum_{i, j, c} xpad[n, p + i, q + j, c] * kernel[kh-1-i, kw-1-j, f, c]

    kernel (kh, kw, F, C) as Keras's Conv2DTranspose; output_padding None or a pair.
    """
    xpad, flipped, out_size, _ = _transpose_setup(x, kernel, strides, padding, output_padding)
    y = np.zeros((x.shape[0], *out_size, kernel.shape[2]), dtype=x.dtype)
    for n, p, q, rows, cols in _sliding_windows(x.shape[0], out_size, kernel.shape[:2], (1, 1)):
        for f in range(kernel.shape[2]):
            y[n, p, q, f] = np.sum(xpad[n, rows, cols, :] * flipped[:, :, f, :])
    return y if bias is None else y + bias


def conv2d_transpose_backward(x, kernel, dy, strides=(1, 1), padding="valid", output_padding=None):
    """(dx, dkernel, dbias), term by term through conv2d_transpose_forward's sum;
    dx is read back from the dilated input's real pixels (the inserted zeros are constants)."""
    xpad, flipped, out_size, pads = _transpose_setup(x, kernel, strides, padding, output_padding)
    dxpad, dflipped = np.zeros_like(xpad), np.zeros_like(flipped)
    for n, p, q, rows, cols in _sliding_windows(x.shape[0], out_size, kernel.shape[:2], (1, 1)):
        for f in range(kernel.shape[2]):
            dxpad[n, rows, cols, :] += dy[n, p, q, f] * flipped[:, :, f, :]
            dflipped[:, :, f, :] += dy[n, p, q, f] * xpad[n, rows, cols, :]
    (top, _), (left, _) = pads
    dx = dxpad[:, top:top + (x.shape[1] - 1) * strides[0] + 1:strides[0],
               left:left + (x.shape[2] - 1) * strides[1] + 1:strides[1], :]
    return dx, dflipped[::-1, ::-1], dy.sum(axis=(0, 1, 2))


def depthwise_conv2d_forward(x, kernel, bias, strides=(1, 1), padding="valid"):
    """Each channel c on its own, M = kernel.shape[3] kernels for it:

        y[n, oh, ow, c*M + m] = bias[c*M + m] + sum_{i, j} xpad[n, oh*sh + i, ow*sw + j, c] * kernel[i, j, c, m]
    """
    kh, kw, channels, multiplier = kernel.shape
    pads, out_size = window_padding_2d(x.shape[1], x.shape[2], (kh, kw), strides, padding)
    xpad = pad_2d(x, pads)
    y = np.zeros((x.shape[0], *out_size, channels * multiplier), dtype=x.dtype)
    for n, oh, ow, rows, cols in _sliding_windows(x.shape[0], out_size, (kh, kw), strides):
        for c in range(channels):
            for m in range(multiplier):
                y[n, oh, ow, c * multiplier + m] = np.sum(xpad[n, rows, cols, c] * kernel[:, :, c, m])
    return y if bias is None else y + bias


def depthwise_conv2d_backward(x, kernel, dy, strides=(1, 1), padding="valid"):
    """(dx, dkernel, dbias): each product xpad[.., c] * kernel[i, j, c, m] of the
    forward sum sends dy[.., c*M + m] times the one factor to the other."""
    kh, kw, channels, multiplier = kernel.shape
    pads, out_size = window_padding_2d(x.shape[1], x.shape[2], (kh, kw), strides, padding)
    xpad = pad_2d(x, pads)
    dxpad, dkernel = np.zeros_like(xpad), np.zeros_like(kernel)
    for n, oh, ow, rows, cols in _sliding_windows(x.shape[0], out_size, (kh, kw), strides):
        for c in range(channels):
            for m in range(multiplier):
                g = dy[n, oh, ow, c * multiplier + m]
                dxpad[n, rows, cols, c] += g * kernel[:, :, c, m]
                dkernel[:, :, c, m] += g * xpad[n, rows, cols, c]
    return crop_2d(dxpad, pads), dkernel, dy.sum(axis=(0, 1, 2))
