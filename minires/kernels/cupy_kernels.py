"""The same kernels as slicing.py, as CUDA kernels for CuPy arrays.

Same signatures, same results (tests check them against the slicing versions
on the GPU, and ``tests/test_cupy_kernel_source.py`` runs their C++ source on
the CPU). The slicing versions run on CuPy too, but each slice is a kernel
launch of its own, and col2im's ``+=`` over overlapping windows walks the whole
gradient once per window offset; here every function is ONE kernel launch.

Each kernel is a ``cupy.ElementwiseKernel``: CuPy starts one GPU thread per
element of the output array and hands it ``i``, that element's flat (C-order)
index; the thread unravels ``i`` into (n, h, w, c) and computes that element,
nothing else. ``raw`` inputs are read at any flat index the thread computes.
``T`` stands for the float type of the arrays: CuPy compiles one version per
type (float16, float32, float64) on first use and caches it.

One thread per OUTPUT element, also where a scatter would be the obvious
loop. In col2im and max-pool backward an input pixel read by several
overlapping windows receives a gradient from each. Scattering (one thread per
window entry, adding into dx) would have several threads add into the same
element at once: a race, fixable with atomicAdd, which serialises those adds
and sums floats in a different order on every run. Instead the thread that
owns dx[n, h, w, c] gathers from every window that read that pixel: no two
threads write the same element, so no atomics, and a fixed summation order.
That is the Numba kernels' design (each thread owns rows of dx), taken down
to single elements.

CuPy is imported on first use, here and in minires.backend only: minires
runs without it, and only CuPy arrays reach these functions.
"""
import functools
from typing import NamedTuple

from ..backend import get_array_module
from .slicing import output_size


class KernelSource(NamedTuple):
    """What ``cupy.ElementwiseKernel`` compiles: parameters and the loop body."""
    inputs: str
    outputs: str
    body: str


# The sliding window, as every kernel receives it (the padded input is
# (N, height, width, channels), the output (N, out_h, out_w, ...)).
WINDOW = ("int32 height, int32 width, int32 channels, int32 out_h, int32 out_w, "
          "int32 kh, int32 kw, int32 sh, int32 sw")

# Shared by the two gather kernels (CuPy puts it before each kernel's code).
PREAMBLE = """
// The window that reads input pixel `pixel` at position `offset` inside it:
// window o covers pixels o * stride ... o * stride + size - 1, so
// o = (pixel - offset) / stride when that divides exactly and 0 <= o < windows.
// -1 when no window reads the pixel at that offset.
__device__ int window_reading(int pixel, int offset, int stride, int windows) {
    const int start = pixel - offset;
    if (start < 0 || start % stride != 0 || start / stride >= windows) {
        return -1;
    }
    return start / stride;
}
"""

KERNELS = {
    "im2col": KernelSource("raw T x, " + WINDOW, "T cols", """
        // i indexes cols[n, oh, ow, a, b, c]; unravel it, last axis first.
        ptrdiff_t rest = i;
        const int c = rest % channels;  rest /= channels;
        const int b = rest % kw;        rest /= kw;
        const int a = rest % kh;        rest /= kh;
        const int ow = rest % out_w;    rest /= out_w;
        const int oh = rest % out_h;
        const ptrdiff_t n = rest / out_h;
        cols = x[((n * height + oh * sh + a) * width + ow * sw + b) * channels + c];
    """),
    "col2im": KernelSource("raw T cols, " + WINDOW, "T dx", """
        // i indexes dx[n, h, w, c]: gather the column entries of every window
        // that read input pixel (h, w), at window position (a, b).
        ptrdiff_t rest = i;
        const int c = rest % channels;  rest /= channels;
        const int w = rest % width;     rest /= width;
        const int h = rest % height;
        const ptrdiff_t n = rest / height;
        T total = T(0);
        for (int a = 0; a < kh; ++a) {
            const int oh = window_reading(h, a, sh, out_h);
            if (oh < 0) continue;
            for (int b = 0; b < kw; ++b) {
                const int ow = window_reading(w, b, sw, out_w);
                if (ow < 0) continue;
                total += cols[((((n * out_h + oh) * out_w + ow) * kh + a) * kw + b) * channels + c];
            }
        }
        dx = total;
    """),
    "max_pool_forward": KernelSource("raw T x, " + WINDOW, "T out, int64 argmax", """
        // i indexes out[n, oh, ow, c]: the maximum of one window and where it lies.
        ptrdiff_t rest = i;
        const int c = rest % channels;  rest /= channels;
        const int ow = rest % out_w;    rest /= out_w;
        const int oh = rest % out_h;
        const ptrdiff_t n = rest / out_h;
        const ptrdiff_t corner = ((n * height + oh * sh) * width + ow * sw) * channels + c;
        T best = x[corner];
        long long where = 0;
        for (int a = 0; a < kh; ++a) {
            for (int b = 0; b < kw; ++b) {
                const T value = x[corner + ((ptrdiff_t)a * width + b) * channels];
                // Strict, so the first maximum wins ties. A NaN (the one value
                // with v != v) beats every number, as in np.argmax: without that
                // test, `value > best` is false for a NaN, which would be dropped.
                // Once best is NaN nothing beats it: the first NaN wins.
                const bool value_is_nan = value != value, best_is_nan = best != best;
                if (value > best || (value_is_nan && !best_is_nan)) {
                    best = value;
                    where = a * kw + b;
                }
            }
        }
        out = best;
        argmax = where;
    """),
    "max_pool_backward": KernelSource("raw T g, raw int64 argmax, " + WINDOW, "T dx", """
        // i indexes dx[n, h, w, c]: the sum of g over the windows whose maximum
        // was input pixel (h, w), i.e. whose argmax is this pixel's position (a, b).
        ptrdiff_t rest = i;
        const int c = rest % channels;  rest /= channels;
        const int w = rest % width;     rest /= width;
        const int h = rest % height;
        const ptrdiff_t n = rest / height;
        T total = T(0);
        for (int a = 0; a < kh; ++a) {
            const int oh = window_reading(h, a, sh, out_h);
            if (oh < 0) continue;
            for (int b = 0; b < kw; ++b) {
                const int ow = window_reading(w, b, sw, out_w);
                if (ow < 0) continue;
                const ptrdiff_t k = ((n * out_h + oh) * out_w + ow) * channels + c;
                if (argmax[k] == a * kw + b) total += g[k];
            }
        }
        dx = total;
    """),
}


@functools.lru_cache(maxsize=None)
def _kernel(name):
    """The ``cupy.ElementwiseKernel`` for KERNELS[name] (compiled by CuPy at its first call)."""
    import cupy
    source = KERNELS[name]
    return cupy.ElementwiseKernel(source.inputs, source.outputs, source.body,
                                  name=f"minires_{name}", preamble=PREAMBLE)


def _launch(name, inputs, padded_shape, out_size, window, strides, outputs):
    """Run kernel ``name``: one thread per element of ``outputs``, which it fills."""
    _, height, width, channels = padded_shape
    _kernel(name)(*inputs, height, width, channels, *out_size, *window, *strides, *outputs)


def im2col(x, kh, kw, sh, sw):
    """x: padded (N, H, W, C) -> cols (N, OH, OW, kh, kw, C); see slicing.im2col."""
    xp = get_array_module(x)
    n, height, width, channels = x.shape
    out_h, out_w = output_size(height, width, kh, kw, sh, sw)
    cols = xp.empty((n, out_h, out_w, kh, kw, channels), dtype=x.dtype)
    _launch("im2col", [xp.ascontiguousarray(x)], x.shape, (out_h, out_w), (kh, kw), (sh, sw), [cols])
    return cols


def col2im(cols, padded_shape, sh, sw):
    """cols (N, OH, OW, kh, kw, C) -> (N, H, W, C): see slicing.col2im."""
    xp = get_array_module(cols)
    _, out_h, out_w, kh, kw, _ = cols.shape
    dx = xp.empty(padded_shape, dtype=cols.dtype)      # every element is written
    _launch("col2im", [xp.ascontiguousarray(cols)], padded_shape, (out_h, out_w), (kh, kw),
            (sh, sw), [dx])
    return dx


def max_pool_forward(x, ph, pw, sh, sw):
    """x: padded (N, H, W, C) -> (out, argmax), as slicing.max_pool_forward."""
    xp = get_array_module(x)
    n, height, width, channels = x.shape
    out_h, out_w = output_size(height, width, ph, pw, sh, sw)
    out = xp.empty((n, out_h, out_w, channels), dtype=x.dtype)
    argmax = xp.empty((n, out_h, out_w, channels), dtype=xp.int64)
    _launch("max_pool_forward", [xp.ascontiguousarray(x)], x.shape, (out_h, out_w), (ph, pw),
            (sh, sw), [out, argmax])
    return out, argmax


def max_pool_backward(g, argmax, padded_shape, ph, pw, sh, sw):
    """Gradient of the padded input: each g goes to its window's winner."""
    xp = get_array_module(g)
    dx = xp.empty(padded_shape, dtype=g.dtype)         # every element is written
    _launch("max_pool_backward", [xp.ascontiguousarray(g), xp.ascontiguousarray(argmax)],
            padded_shape, g.shape[1:3], (ph, pw), (sh, sw), [dx])
    return dx
