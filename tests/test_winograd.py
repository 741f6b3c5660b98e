"""Winograd F(2x2, 3x3) and F(4x4, 3x3) against the loop definition of a
convolution, their matrices against the interpolation points they come from,
the Numba transforms against the NumPy ones, and the fast path's choice of
algorithm per layer."""
import numpy as np
import pytest

from minires import backend, kernels, naive
from minires.applications import ResNet50
from minires.fast_ops import FoldedConv
from minires.kernels import winograd
from minires.kernels.winograd import winograd_pays_at, winograd_tile_size
from minires.layers import Conv2D, Input
from minires.models import Model
from minires.padding import window_padding_2d

# output sizes 7x8, 6x6, 9x5, 1x1, 1x1, 8x12: odd, even, not multiples of 4, smaller than a tile
CASES = [((2, 7, 8, 3), 4, "same"), ((1, 8, 8, 5), 2, "valid"), ((3, 9, 5, 2), 3, "same"),
         ((2, 3, 3, 4), 4, "valid"), ((1, 1, 1, 2), 3, "same"), ((1, 10, 14, 3), 2, "valid")]


def conv_case(rng, shape, filters, padding, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    kernel = rng.standard_normal((3, 3, shape[3], filters)).astype(dtype)
    bias = rng.standard_normal(filters).astype(dtype)
    pads, out_size = window_padding_2d(shape[1], shape[2], (3, 3), (1, 1), padding)
    expected = naive.conv2d_forward(x, kernel, bias, padding=padding)
    residual = rng.standard_normal(expected.shape).astype(dtype)
    return x, kernel, bias, pads, out_size, expected, residual


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
@pytest.mark.parametrize("shape, filters, padding", CASES)
def test_matches_the_loop_convolution(rng, shape, filters, padding, m, each_kernel_path):
    """Output sizes that are not multiples of m use a spare tile row and column."""
    x, kernel, bias, pads, out_size, expected, residual = conv_case(rng, shape, filters, padding, np.float64)
    u = winograd.transform_kernel(kernel, m)
    assert u.shape == ((m + 2) ** 2, shape[3], filters)
    plain = kernels.winograd_conv3x3(x, u, pads, out_size, bias, None, False)
    fused = kernels.winograd_conv3x3(x, u, pads, out_size, bias, residual, True)
    np.testing.assert_allclose(plain, expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    np.testing.assert_allclose(fused, np.maximum(expected + residual, 0), rtol=0, atol=1e-12 * np.abs(expected).max())


def toom_cook_matrices(points):
    """B^T, G, A^T of F(m, 3) from m + 1 finite points and infinity, by the
    recipe of winograd.py's docstring."""
    m = len(points) - 1
    a_t = np.array([[p ** i for p in points] + [float(i == m - 1)] for i in range(m)])
    g = np.array([np.array([1, p, p * p]) / np.prod([p - q for q in points if q != p]) for p in points]
                 + [[0, 0, 1]])
    numerators = [np.polynomial.polynomial.polyfromroots([q for q in points if q != p]) for p in points]
    numerators.append(np.polynomial.polynomial.polyfromroots(points))       # infinity's
    b_t = np.array([np.pad(c, (0, m + 2 - len(c))) for c in numerators])
    return b_t, g, a_t


def test_f4x4_matrices_come_from_the_points_0_1_minus1_2_minus2_infinity():
    b_t, g, a_t = toom_cook_matrices([0, 1, -1, 2, -2])
    np.testing.assert_array_equal(np.array(winograd.B_T[4]), b_t)
    np.testing.assert_allclose(np.array(winograd.G[4]), g, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(np.array(winograd.A_T[4]), a_t)


def test_f2x2_matrices_are_the_recipes_with_lavins_signs():
    """Point 0's rows of B^T and G, and infinity's row of B^T and column of A^T, negated."""
    b_t, g, a_t = toom_cook_matrices([0, 1, -1])
    np.testing.assert_array_equal(np.array(winograd.B_T[2]), np.diag([-1, 1, 1, -1]) @ b_t)
    np.testing.assert_array_equal(np.array(winograd.G[2]), np.diag([-1, 1, 1, 1]) @ g)
    np.testing.assert_array_equal(np.array(winograd.A_T[2]), a_t @ np.diag([1, 1, 1, -1]))


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_numba_transforms_match_numpy(rng, dtype, tol, m):
    numba_kernels = pytest.importorskip("minires.kernels.numba_kernels", reason="Numba is not installed")
    x, kernel, bias, pads, out_size, expected, residual = conv_case(rng, (2, 14, 13, 16), 8, "same", dtype)
    v = {module: module.input_tiles(x, pads, out_size, m) for module in (winograd, numba_kernels)}
    assert np.abs(v[numba_kernels] - v[winograd]).max() <= tol * np.abs(v[winograd]).max()
    products = np.matmul(v[winograd], winograd.transform_kernel(kernel, m))
    z = {}
    for module in (winograd, numba_kernels):
        z[module] = np.empty(expected.shape, dtype)
        module.output_tiles(products, bias, residual, True, z[module], m)
    assert np.abs(z[numba_kernels] - z[winograd]).max() <= tol * np.abs(z[winograd]).max()


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
@pytest.mark.parametrize("shape, filters, padding", CASES)
def test_kernel_gradient_matches_the_loop_convolutions(rng, shape, filters, padding, m, each_kernel_path):
    """dW by F(m x m) (kernels.winograd_kernel_gradient), spare tiles included,
    against naive.conv2d_backward's."""
    x, kernel, bias, pads, out_size, expected, _ = conv_case(rng, shape, filters, padding, np.float64)
    dz = rng.standard_normal(expected.shape)
    _, expected_dw, _ = naive.conv2d_backward(x, kernel, dz, padding=padding)
    dw = kernels.winograd_kernel_gradient(x, dz, pads, m)
    np.testing.assert_allclose(dw, expected_dw, rtol=0, atol=1e-12 * np.abs(expected_dw).max())


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
def test_gradient_tiles_and_kernel_gradient_are_the_adjoints_of_their_transforms(rng, m):
    """<output_tiles(M), dz> = <M, gradient_tiles(dz)> and <transform_kernel(W), dU> =
    <W, kernel_gradient(dU)>: each backward transform is its forward's transpose."""
    numba_kernels = pytest.importorskip("minires.kernels.numba_kernels", reason="Numba is not installed")
    batch, out_h, out_w, filters = 2, 7, 9, 5
    tiles = batch * np.prod(winograd.tile_counts(out_h, out_w, m))
    products = rng.standard_normal(((m + 2) ** 2, tiles, filters))
    dz = rng.standard_normal((batch, out_h, out_w, filters))
    z = np.empty_like(dz)
    winograd.output_tiles(products, np.zeros(filters), None, False, z, m)
    for module in (winograd, numba_kernels):
        np.testing.assert_allclose(np.vdot(products, module.gradient_tiles(dz, m)), np.vdot(z, dz), rtol=1e-12)
    kernel, grads_u = rng.standard_normal((3, 3, 4, 5)), rng.standard_normal(((m + 2) ** 2, 4, 5))
    np.testing.assert_allclose(np.vdot(kernel, winograd.kernel_gradient(grads_u, m)),
                               np.vdot(winograd.transform_kernel(kernel, m), grads_u), rtol=1e-12)


@pytest.mark.parametrize("m, bound", [(2, 2e-6), (4, 3e-5)])
def test_float32_rounding_is_within_the_fast_paths_budget(rng, m, bound):
    """A stage-4 sized layer, 256 channels, ReLU'd inputs and He-scaled weights:
    largest error against float64 loops, relative to the largest output. F(4x4)
    rounds about 20x more than F(2x2) (measured on 256 filters: 1e-5 and 6e-7;
    im2col 4e-7); on ResNet-50's logits the fast path stays under 1e-5."""
    x = np.maximum(rng.standard_normal((1, 14, 14, 256)), 0).astype(np.float32)
    kernel = (rng.standard_normal((3, 3, 256, 8)) * np.sqrt(2 / (9 * 256))).astype(np.float32)
    bias = np.zeros(8, np.float32)
    pads, out_size = window_padding_2d(14, 14, (3, 3), (1, 1), "same")
    exact = naive.conv2d_forward(x.astype(np.float64), kernel.astype(np.float64), None, padding="same")
    got = kernels.winograd_conv3x3(x, winograd.transform_kernel(kernel, m), pads, out_size, bias, None, False)
    assert np.abs(got - exact).max() / np.abs(exact).max() <= bound


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
def test_chunks_under_a_small_memory_cap_give_the_same_result(rng, m):
    x, kernel, bias, pads, out_size, expected, _ = conv_case(rng, (5, 8, 8, 4), 3, "same", np.float64)
    u = winograd.transform_kernel(kernel, m)
    tiles_h, tiles_w = winograd.tile_counts(*out_size, m)
    previous = backend.im2col_limit()
    backend.set_im2col_limit(2 * u.shape[0] * tiles_h * tiles_w * 7 * 8 / 2 ** 20)   # two images: 3 chunks
    try:
        chunked = kernels.winograd_conv3x3(x, u, pads, out_size, bias, None, False)
    finally:
        backend.set_im2col_limit(previous / 2 ** 20)
    np.testing.assert_allclose(chunked, expected, rtol=0, atol=1e-12 * np.abs(expected).max())


def test_bad_kernels_and_tile_sizes_are_refused():
    with pytest.raises(ValueError, match=r"\(3, 3, C, F\) kernel, got shape \(1, 1, 2, 3\)"):
        winograd.transform_kernel(np.zeros((1, 1, 2, 3)), 4)
    with pytest.raises(ValueError, match=r"one of \(2, 4\), got 3"):
        winograd.transform_kernel(np.zeros((3, 3, 2, 3)), 3)
    with pytest.raises(ValueError, match=r"one of \(2, 4\), got 3"):         # a 5x5-tile U
        kernels.winograd_conv3x3(np.zeros((1, 4, 4, 2)), np.zeros((25, 2, 3)), ((1, 1), (1, 1)), (4, 4),
                                 np.zeros(3), None, False)


# --- which algorithm each 3x3 stride-1 conv of the fast path gets ------------------------
def test_resnet50_gets_f4x4_at_56_and_28_and_f2x2_at_14_and_7():
    """Stages 2-3: F(4x4); stages 4-5: few tiles per image and kernels too big
    for the cache, F(2x2) (winograd.winograd_tile_size)."""
    chosen = {}
    for step in ResNet50(weights=None).plan("inference").steps:
        if isinstance(step.op, FoldedConv) and step.op.winograd_kernel is not None:
            chosen.setdefault(step.output.shape[1:], set()).add(step.op.tile_size)
            assert step.op.winograd_kernel.shape[0] == (step.op.tile_size + 2) ** 2
    assert chosen == {(56, 56, 64): {4}, (28, 28, 128): {4}, (14, 14, 256): {2}, (7, 7, 512): {2}}


@pytest.mark.parametrize("out_size, channels, filters, expected", [
    ((224, 224), 3, 64, None),        # an RGB image: the transforms outweigh the products saved
    ((3, 3), 512, 512, None),         # mostly spare tiles
    ((4, 4), 512, 512, 2),
    ((24, 24), 256, 256, 4),          # 36 tiles of 4x4 per image
    ((20, 20), 256, 256, 2),          # 25 tiles, a 9 MB transformed kernel
    ((7, 7), 128, 128, 4),            # 4 tiles, but a 2.4 MB kernel that stays in cache
    ((7, 7), 128, 256, 2),            # 4.7 MB
    ((None, None), 64, 64, 2),        # a model for any image size
    ((None, None), 8, 64, None)])
def test_the_rule_at_its_edges(out_size, channels, filters, expected):
    assert winograd_tile_size(out_size, channels, filters, 4) == expected


def test_each_conv_runs_as_chosen_and_gives_the_models_outputs(rng, monkeypatch):
    monkeypatch.setattr(winograd, "WINOGRAD_LEAST_TILES", 1)     # small images: Winograd all the same
    x_in = Input((8, 8, 3))
    x = Conv2D(16, 3, padding="same", name="rgb")(x_in)             # 3 channels: im2col
    x = Conv2D(16, 3, padding="same", name="same_8x8")(x)           # F(4x4), one spare-free 2x2 tile grid
    x = Conv2D(16, 3, name="valid_6x6")(x)                          # F(4x4), spare tiles
    x = Conv2D(16, 3, name="valid_4x4")(x)
    x = Conv2D(16, 3, name="valid_2x2")(x)                          # under 4x4: im2col
    model = Model(x_in, x)
    sizes = {step.op.conv.name: step.op.tile_size for step in model.plan("inference").steps
             if isinstance(step.op, FoldedConv)}
    assert sizes == {"rgb": None, "same_8x8": 4, "valid_6x6": 4, "valid_4x4": 4, "valid_2x2": None}
    images = rng.standard_normal((3, 8, 8, 3)).astype(np.float32)
    expected = model.forward(images, training=False, keep_cache=True)        # layer by layer
    assert np.abs(model.predict_arrays(images) - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("batch, out_size, m, expected", [
    (1, (7, 7), 2, False),            # ResNet-50's stage 5 at batch 1: 16 tiles, im2col
    (2, (7, 7), 2, True),             # 32 tiles
    (1, (14, 14), 2, True),           # 49
    (1, (14, 14), 4, False)])         # 16
def test_winograd_needs_enough_tiles_in_the_batch(batch, out_size, m, expected):
    assert winograd_pays_at(batch, out_size, m) is expected


def test_a_batch_with_few_tiles_runs_im2col_and_the_same_outputs(rng, monkeypatch):
    x_in = Input((7, 7, 128))
    model = Model(x_in, Conv2D(256, 3, padding="same")(x_in))        # F(2x2): 16 tiles an image
    model.fast_training = False                                      # the reference: im2col
    assert [step.op.tile_size for step in model.plan("inference").steps] == [2]
    calls = []
    winograd_conv3x3 = kernels.winograd_conv3x3
    monkeypatch.setattr(kernels, "winograd_conv3x3", lambda *a: calls.append(a[0].shape) or winograd_conv3x3(*a))
    for batch in (1, 2):
        images = rng.standard_normal((batch, 7, 7, 128)).astype(np.float32)
        expected = model.forward(images, training=False, keep_cache=True)
        assert np.abs(model.predict_arrays(images) - expected).max() <= 1e-5 * np.abs(expected).max()
    assert calls == [(2, 7, 7, 128)]                   # batch 1 (16 tiles) ran im2col
