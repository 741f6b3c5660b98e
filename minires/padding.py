"""Output sizes and padding amounts for sliding windows, with Keras's rules.

'valid': no padding; the window must fit, so out = floor((n - k) / s) + 1.
'same':  out = ceil(n / s), and just enough zeros are added for the last
         window to fit: total = max((out - 1) * s + k - n, 0), split with the
         smaller half before and the larger half after (TensorFlow's rule,
         which the Keras weight files were trained with).
"""
from .backend import get_array_module

PADDINGS = ("valid", "same")


def window_padding(size, kernel, stride, padding):
    """(pad_before, pad_after, out_size) along one spatial axis."""
    if padding == "valid":
        return 0, 0, (size - kernel) // stride + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


def window_padding_2d(height, width, kernel, strides, padding):
    """((top, bottom), (left, right)), (out_h, out_w) for a 2-D window."""
    top, bottom, out_h = window_padding(height, kernel[0], strides[0], padding)
    left, right, out_w = window_padding(width, kernel[1], strides[1], padding)
    return ((top, bottom), (left, right)), (out_h, out_w)


def pad_2d(x, pads, value=0):
    """Pad the H and W axes of (N, H, W, C) ``x`` by pads = ((top, bottom), (left, right))."""
    if pads == ((0, 0), (0, 0)):
        return x
    xp = get_array_module(x)
    return xp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=value)


def crop_2d(x, pads):
    """Inverse of pad_2d: the gradient of padding is the gradient of the interior."""
    (top, bottom), (left, right) = pads
    return x[:, top:x.shape[1] - bottom, left:x.shape[2] - right, :]
