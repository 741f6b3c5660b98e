"""Random sliding windows, and the check that a set of kernels gives the
slicing kernels' results on them (used for the CUDA kernels, on the GPU and
as C++ on the CPU)."""
import numpy as np
from conftest import on_cpu

from minires.backend import to_device
from minires.kernels import slicing          # the reference module, not the dispatch

# sums of overlapping windows, reordered; float16: up to 16 values near 1 summed in float16
# (half a unit in the last place, 2**-11, of sums up to ~4, rounded at each of 16 additions)
TOLERANCE = {"float16": 2e-2, "float32": 1e-5, "float64": 1e-12}


def random_windows(count, seed=0):
    """``count`` cases (padded input shape, window, strides): windows 1x1 to 4x4,
    strides 1 to 3, so windows overlap (stride < window) or leave gaps that no
    window reads (stride > window), rectangular ones included; each input has
    up to stride - 1 rows and columns past the last window, which no window reads."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        window = tuple(int(k) for k in rng.integers(1, 5, 2))
        strides = tuple(int(s) for s in rng.integers(1, 4, 2))
        size = [int((out - 1) * s + k + rng.integers(0, s))
                for out, k, s in zip(rng.integers(1, 5, 2), window, strides)]
        cases.append(((int(rng.integers(1, 3)), *size, int(rng.integers(1, 4))), window, strides))
    return cases


def case_id(case):
    shape, window, strides = case
    return f"{'x'.join(map(str, shape))}-window{window[0]}x{window[1]}-stride{strides[0]}x{strides[1]}"


def assert_same_as_slicing(kernels, case, dtype, device):
    """im2col, col2im, max-pool forward and backward of ``kernels`` on ``device``
    against the slicing kernels on NumPy: copies and maxima exactly (the first
    maximum of a window wins ties, and its first NaN wins over numbers), sums to rounding."""
    shape, (kh, kw), (sh, sw) = case
    rng = np.random.default_rng(list(shape))
    tolerance = {"rtol": TOLERANCE[dtype], "atol": TOLERANCE[dtype]}

    def run(function, *args):
        """``function`` on ``device``, its result(s) back as NumPy arrays."""
        result = function(*(to_device(a, device) if isinstance(a, np.ndarray) else a for a in args))
        return tuple(map(on_cpu, result)) if isinstance(result, tuple) else on_cpu(result)

    x = rng.standard_normal(shape).astype(dtype)
    cols = slicing.im2col(x, kh, kw, sh, sw)
    np.testing.assert_array_equal(run(kernels.im2col, x, kh, kw, sh, sw), cols)
    g = rng.standard_normal(cols.shape).astype(dtype)
    np.testing.assert_allclose(run(kernels.col2im, g, shape, sh, sw),
                               slicing.col2im(g, shape, sh, sw), **tolerance)

    ties = rng.integers(-1, 2, shape).astype(dtype)          # three values: windows tie
    nans = np.where(rng.random(shape) < 0.2, np.nan, x).astype(dtype)    # the first NaN wins
    for data in (x, ties, nans):
        out, argmax = slicing.max_pool_forward(data, kh, kw, sh, sw)
        ours, our_argmax = run(kernels.max_pool_forward, data, kh, kw, sh, sw)
        np.testing.assert_array_equal(ours, out)
        assert our_argmax.dtype == np.int64
        np.testing.assert_array_equal(our_argmax, argmax)
        g = rng.standard_normal(out.shape).astype(dtype)
        np.testing.assert_allclose(run(kernels.max_pool_backward, g, argmax, shape, kh, kw, sh, sw),
                                   slicing.max_pool_backward(g, argmax, shape, kh, kw, sh, sw),
                                   **tolerance)


def first_maximum_reference(x, kh, kw, sh, sw):
    """Loop-by-loop max-pool argmax of padded ``x``: scanning each window row by
    row, the position of the FIRST value equal to the window's maximum (NumPy's
    argmax and PyTorch break ties this way), or of its first NaN if it holds one
    (np.max of such a window is NaN, and np.argmax points at that first NaN)."""
    n, height, width, channels = x.shape
    out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
    argmax = np.empty((n, out_h, out_w, channels), dtype=np.int64)
    for b, oh, ow, c in np.ndindex(n, out_h, out_w, channels):
        window = [x[b, oh * sh + i, ow * sw + j, c] for i in range(kh) for j in range(kw)]
        nans = [k for k, value in enumerate(window) if np.isnan(value)]
        argmax[b, oh, ow, c] = nans[0] if nans else window.index(max(window))
    return argmax


def values_at(x, argmax, kw, sh, sw):
    """x at each window's position ``argmax``: what max-pool forward outputs."""
    rows, cols = np.divmod(argmax, kw)
    b, oh, ow, c = np.indices(argmax.shape)
    return x[b, oh * sh + rows, ow * sw + cols, c]


TIE_CASES = [((2, 4, 4, 3), (2, 2), (2, 2)),      # windows side by side
             ((1, 7, 7, 2), (3, 3), (2, 2)),      # overlapping: ResNet-50's pool1
             ((1, 5, 6, 2), (3, 2), (1, 2))]      # rectangular, overlapping rows


def assert_ties_go_to_first_maximum(kernels, case, device):
    """Max-pool of ``kernels`` on inputs full of ties (all zeros, as after a ReLU
    on a dead region, and ReLU of a few integers): forward picks the first
    maximum of every window, backward sends each gradient there and nowhere else."""
    rng = np.random.default_rng(list(case[0]))
    for x in (np.zeros(case[0]), np.maximum(rng.integers(-2, 2, case[0]), 0).astype(np.float64)):
        assert_max_pool_follows_reference(kernels, case, device, x, rng)


def assert_nan_wins_its_window(kernels, case, device):
    """Max-pool of ``kernels`` on inputs with NaNs (as a diverging network makes)
    among random numbers, and among ties: a window holding a NaN gives NaN, as
    np.max does, and its first NaN gets the gradient. The windows that a plain
    ``value > best`` scan gets wrong, a number first and a NaN after it, are
    checked to be there."""
    shape, (kh, kw), (sh, sw) = case
    rng = np.random.default_rng(list(shape))
    holes = rng.random(shape) < 0.3
    for x in (np.where(holes, np.nan, rng.standard_normal(shape)), np.where(holes, np.nan, 0.0)):
        argmax = first_maximum_reference(x, kh, kw, sh, sw)
        assert (np.isnan(values_at(x, argmax, kw, sh, sw)) & (argmax > 0)).any()
        assert_max_pool_follows_reference(kernels, case, device, x, rng)


def assert_max_pool_follows_reference(kernels, case, device, x, rng):
    """Forward gives first_maximum_reference's argmax and the values there (NaN
    included); backward sends each gradient to that position and nowhere else."""
    shape, (kh, kw), (sh, sw) = case
    expected = first_maximum_reference(x, kh, kw, sh, sw)
    out, argmax = kernels.max_pool_forward(to_device(x, device), kh, kw, sh, sw)
    np.testing.assert_array_equal(on_cpu(argmax), expected)
    np.testing.assert_array_equal(on_cpu(out), values_at(x, expected, kw, sh, sw))
    g = rng.standard_normal(expected.shape)
    dx = on_cpu(kernels.max_pool_backward(to_device(g, device), argmax, shape, kh, kw, sh, sw))
    wanted = np.zeros(shape)
    for b, oh, ow, c in np.ndindex(*expected.shape):
        i, j = divmod(int(expected[b, oh, ow, c]), kw)
        wanted[b, oh * sh + i, ow * sw + j, c] += g[b, oh, ow, c]
    np.testing.assert_allclose(dx, wanted, rtol=1e-12, atol=1e-12)
