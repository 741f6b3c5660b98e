"""Winograd F(2x2, 3x3) against the loop definition of a convolution, and the
Numba transforms against the NumPy ones."""
import numpy as np
import pytest

from minires import backend, kernels, naive
from minires.kernels import winograd
from minires.padding import window_padding_2d

CASES = [((2, 7, 8, 3), 4, "same"), ((1, 8, 8, 5), 2, "valid"), ((3, 9, 5, 2), 3, "same"),
         ((2, 3, 3, 4), 4, "valid"), ((1, 1, 1, 2), 3, "same")]


def conv_case(rng, shape, filters, padding, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    kernel = rng.standard_normal((3, 3, shape[3], filters)).astype(dtype)
    bias = rng.standard_normal(filters).astype(dtype)
    pads, out_size = window_padding_2d(shape[1], shape[2], (3, 3), (1, 1), padding)
    expected = naive.conv2d_forward(x, kernel, bias, padding=padding)
    residual = rng.standard_normal(expected.shape).astype(dtype)
    return x, kernel, bias, pads, out_size, expected, residual


@pytest.mark.parametrize("shape, filters, padding", CASES)
def test_matches_the_loop_convolution(rng, shape, filters, padding, each_kernel_path):
    """Odd output sizes (7, 9, 3, 1) use a spare tile row and column."""
    x, kernel, bias, pads, out_size, expected, residual = conv_case(rng, shape, filters, padding, np.float64)
    u = winograd.transform_kernel(kernel)
    plain = kernels.winograd_conv3x3(x, u, pads, out_size, bias, None, False)
    fused = kernels.winograd_conv3x3(x, u, pads, out_size, bias, residual, True)
    np.testing.assert_allclose(plain, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    np.testing.assert_allclose(fused, np.maximum(expected + residual, 0), rtol=0, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_numba_transforms_match_numpy(rng, dtype, tol):
    numba_kernels = pytest.importorskip("minires.kernels.numba_kernels", reason="Numba is not installed")
    x, kernel, bias, pads, out_size, expected, residual = conv_case(rng, (2, 14, 13, 16), 8, "same", dtype)
    v = {m: m.input_tiles(x, pads, out_size) for m in (winograd, numba_kernels)}
    assert np.abs(v[numba_kernels] - v[winograd]).max() <= tol * np.abs(v[winograd]).max()
    m = np.matmul(v[winograd], winograd.transform_kernel(kernel))
    z = {}
    for module in (winograd, numba_kernels):
        z[module] = np.empty(expected.shape, dtype)
        module.output_tiles(m, bias, residual, True, z[module])
    assert np.abs(z[numba_kernels] - z[winograd]).max() <= tol * np.abs(z[winograd]).max()


def test_float32_rounding_is_within_the_fast_paths_budget(rng):
    """Stage-4 sized, 256 channels: relative error against float64 loops."""
    x, kernel, bias, pads, out_size, _, _ = conv_case(rng, (1, 14, 14, 256), 8, "same", np.float32)
    exact = naive.conv2d_forward(x.astype(np.float64), kernel.astype(np.float64),
                                 bias.astype(np.float64), padding="same")
    got = kernels.winograd_conv3x3(x, winograd.transform_kernel(kernel), pads, out_size, bias, None, False)
    assert np.abs(got - exact).max() / np.abs(exact).max() <= 1e-6


def test_chunks_under_a_small_memory_cap_give_the_same_result(rng):
    x, kernel, bias, pads, out_size, expected, _ = conv_case(rng, (5, 8, 8, 4), 3, "same", np.float64)
    u = winograd.transform_kernel(kernel)
    previous = backend.im2col_limit()
    backend.set_im2col_limit(16 * 16 * 7 * 8 / 2 ** 20)      # two images' tiles: 3 chunks
    try:
        chunked = kernels.winograd_conv3x3(x, u, pads, out_size, bias, None, False)
    finally:
        backend.set_im2col_limit(previous / 2 ** 20)
    np.testing.assert_allclose(chunked, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
