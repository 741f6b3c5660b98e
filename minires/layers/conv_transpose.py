"""Transposed 2-D convolution: Conv2D's backward pass run forward.

A Conv2D maps an image to a smaller one (with strides, much smaller); its
input gradient maps the smaller one back to the larger shape. Conv2DTranspose
is that map with its own learnt kernel: upsampling that learns what to paint.
"""
from ..kernels import col2im, im2col
from ..padding import crop_2d, pad_2d
from .base import as_pair, check_positive_int
from .kernel import WindowKernelLayer


def transpose_padding(size, kernel, stride, padding, output_padding=None):
    """(crop_before, crop_after, out) along one axis, Keras's rule.

    The full scatter is (size - 1) * stride + kernel long; Keras's output has
        'valid': out = (size - 1) * stride + max(kernel, stride),  or full + output_padding
        'same':  out = size * stride,  or (size - 1) * stride + kernel % 2 + output_padding
    rows. A surplus full - out is cropped, the smaller half before (as 'same'
    pads a Conv2D: this makes the layer the exact transpose of such a Conv2D);
    where out reaches past the scatter, the rows after it are zeros. So the
    scatter is written on a canvas of crop_before + out + crop_after rows.
    """
    full = (size - 1) * stride + kernel
    if output_padding is None:
        out = full + max(stride - kernel, 0) if padding == "valid" else size * stride
    else:
        out = full + output_padding if padding == "valid" else full - kernel + kernel % 2 + output_padding
    before = max((full - out) // 2, 0)
    return before, max(full - before - out, 0), out


class Conv2DTranspose(WindowKernelLayer):
    """y = act(b + crop(scatter(x, W))), where every input pixel paints the kernel:

        full[n, h*sh + i, w*sw + j, f] += sum_c x[n, h, w, c] W[i, j, f, c]

    and Keras's crop (``transpose_padding``) cuts full to the output size.

    Shapes: x (N, H, W, C), kernel W (kh, kw, F, C), bias b (F,), y (N, OH, OW, F);
    'same' without output_padding gives OH = H * sh.

    W's layout is Conv2D's (kh, kw, C_in, C_out) for the conv that goes the
    other way, from F channels to C: this forward IS that Conv2D's input
    gradient (see Conv2D.backward), with x in place of dZ. With Wm =
    W.reshape(kh*kw*F, C) and the pixels of x as rows x_rows (N*H*W, C):
        P = x_rows @ Wm.T       each pixel's kh x kw x F patch          (N*H*W, kh*kw*F)
        full = col2im(P)        overlapping patches add up
        z = crop(full) + b
    Backward is therefore that Conv2D's forward: im2col and one matrix product.
    From dZ = dL/dz, padded back to the canvas (cropped rows get no gradient):
        dP = im2col(dfull)      the patch each pixel painted, read back
        dx_rows = dP @ Wm       each patch entry came from every channel of its pixel
        dWm = dP.T @ x_rows     each weight meets every pixel it painted with
        db  = sum_rows dZ
    Loop-by-loop twin: ``naive.conv2d_transpose_forward`` / ``conv2d_transpose_backward``.
    """
    channel_axis = -1                        # W (kh, kw, F, C): C is the input's channels

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", output_padding=None, *,
                 activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", name=None, **kwargs):
        super().__init__(kernel_size, strides, padding, activation, use_bias, kernel_initializer,
                         bias_initializer, name, **kwargs)
        self.filters = check_positive_int(filters, "filters", self.name)
        self.output_padding = None if output_padding is None else as_pair(
            output_padding, "output_padding", self.name, allow_zero=True)
        if self.output_padding is not None and any(
                extra >= stride for extra, stride in zip(self.output_padding, self.strides)):
            raise ValueError(f"layer {self.name!r}: output_padding {self.output_padding} must be "
                             f"smaller than strides {self.strides} on each axis (as Keras)")

    def build(self, input_shape, like_array):
        channels = self.known_size(input_shape, -1)
        self.add_weight("kernel", (*self.kernel_size, self.filters, channels),
                        self.kernel_initializer, like_array)
        self.add_bias(self.filters, like_array)

    def pads(self, x_shape):
        """((top, bottom), (left, right)) cropped off the canvas, and (OH, OW)."""
        extras = self.output_padding or (None, None)
        (top, bottom, out_h), (left, right, out_w) = [
            transpose_padding(size, kernel, stride, self.padding, extra) for size, kernel, stride, extra
            in zip(x_shape[1:3], self.kernel_size, self.strides, extras)]
        if min(out_h, out_w) < 1:
            raise ValueError(f"layer {self.name!r}: an input of shape {tuple(x_shape)} gives an "
                             f"output of {out_h} x {out_w} pixels (kernel {self.kernel_size}, "
                             f"strides {self.strides}, padding {self.padding!r}, "
                             f"output_padding {self.output_padding})")
        return ((top, bottom), (left, right)), (out_h, out_w)

    def compute_output_shape(self, input_shape):
        n, height, width, _ = input_shape
        stand_ins = [2 if size is None else size for size in (height, width)]   # any size > 1 fits
        _, (out_h, out_w) = self.pads((n, *stand_ins, None))
        return n, None if height is None else out_h, None if width is None else out_w, self.filters

    def forward(self, x, training=False):
        x = self._prepare(x)
        pads, out_size = self.pads(x.shape)
        n, height, width, channels = x.shape
        kernel = self.params["kernel"].reshape(-1, channels)                   # Wm (kh*kw*F, C)
        patches = (x.reshape(-1, channels) @ kernel.T).reshape(
            n, height, width, *self.kernel_size, self.filters)                 # P, one patch a pixel
        canvas_size = [size + sum(pad) for size, pad in zip(out_size, pads)]   # full, or more
        canvas = col2im(patches, (n, *canvas_size, self.filters), *self.strides)
        z = crop_2d(canvas, pads).copy()          # its own C-ordered array: b is added in place
        y = self.bias_and_activation(z)
        return y, (x, self.output_for_backward(y))

    def backward(self, dy, cache, through_activation=True, input_grad=True):
        """dL/dx (None when ``input_grad`` is False)."""
        x, y = cache
        pads, out_size = self.pads(x.shape)
        n, height, width, channels = x.shape
        dz = self.bias_and_activation_backward(dy, y, (n, *out_size, self.filters),
                                               through_activation)
        full_h, full_w = [(size - 1) * stride + k for size, stride, k in
                          zip((height, width), self.strides, self.kernel_size)]
        d_full = pad_2d(dz, pads)[:, :full_h, :full_w, :]   # the canvas past full: no patch reached it
        kernel = self.params["kernel"].reshape(-1, channels)
        d_patches = im2col(d_full, *self.kernel_size, *self.strides).reshape(-1, kernel.shape[0])
        x_rows = x.reshape(-1, channels)
        self.add_grad("kernel", (d_patches.T @ x_rows).reshape(self.params["kernel"].shape))
        return (d_patches @ kernel).reshape(x.shape) if input_grad else None
