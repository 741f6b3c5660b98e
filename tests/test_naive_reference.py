"""The fast paths against the definitions in minires.naive, float64: im2col conv
and pooling over randomised shapes, strides and paddings, to 1e-10; batch norm
against its step-by-step graph, to 1e-12, and the graph against finite differences."""
import numpy as np
import pytest
from conftest import distinct_values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minires import gradcheck, naive
from minires.kernels import col2im, im2col
from minires.layers import AveragePooling2D, BatchNormalization, Conv2D, MaxPooling2D

TOL = 1e-10
# The fixture only switches the kernel path; it holds no state a generated example could touch.
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
pytestmark = pytest.mark.usefixtures("each_kernel_path")   # NumPy and, where installed, Numba


@st.composite
def window_cases(draw, max_channels=3):
    """A small (N, H, W, C) shape and a window, stride and padding that fit it."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = draw(st.sampled_from(["valid", "same"]))
    low_h, low_w = (1, 1) if padding == "same" else (kh, kw)
    shape = (draw(st.integers(1, 2)), draw(st.integers(low_h, 8)), draw(st.integers(low_w, 8)),
             draw(st.integers(1, max_channels)))
    return shape, (kh, kw), (sh, sw), padding, draw(st.integers(0, 2**32 - 1))


def assert_close(actual, expected):
    assert actual.shape == expected.shape
    err = np.max(np.abs(actual - expected), initial=0.0)
    assert err <= TOL * max(1.0, np.max(np.abs(expected), initial=0.0)), f"max abs error {err:.3e}"


@SETTINGS
@given(window_cases(), st.integers(1, 4), st.booleans())
def test_conv2d_matches_naive(case, filters, use_bias):
    shape, kernel_size, strides, padding, seed = case
    rng = np.random.default_rng(seed)
    conv = Conv2D(filters, kernel_size, strides, padding, use_bias=use_bias, dtype="float64")
    x = rng.standard_normal(shape)
    conv(x)                                           # builds the weights, then set them
    kernel = conv.params["kernel"] = rng.standard_normal(conv.params["kernel"].shape)
    bias = conv.params.get("bias")
    y, cache = conv.forward(x)
    assert_close(y, naive.conv2d_forward(x, kernel, bias, strides, padding))

    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy, cache)
    dx_ref, dkernel_ref, dbias_ref = naive.conv2d_backward(x, kernel, dy, strides, padding)
    assert_close(dx, dx_ref)
    assert_close(conv.grads["kernel"], dkernel_ref)
    if use_bias:
        assert_close(conv.grads["bias"], dbias_ref)


@pytest.mark.parametrize("layer_cls,forward_ref,backward_ref", [
    (MaxPooling2D, naive.max_pool_forward, naive.max_pool_backward),
    (AveragePooling2D, naive.avg_pool_forward, naive.avg_pool_backward),
])
@SETTINGS
@given(case=window_cases())
def test_pooling_matches_naive(layer_cls, forward_ref, backward_ref, case):
    shape, pool_size, strides, padding, seed = case
    rng = np.random.default_rng(seed)
    x = distinct_values(rng, shape)
    pool = layer_cls(pool_size, strides, padding, dtype="float64")
    y, cache = pool.forward(x)
    assert_close(y, forward_ref(x, pool_size, strides, padding))
    dy = rng.standard_normal(y.shape)
    assert_close(pool.backward(dy, cache), backward_ref(x, dy, pool_size, strides, padding))


@SETTINGS
@given(window_cases())
def test_col2im_is_the_adjoint_of_im2col(case):
    """<im2col(x), c> = <x, col2im(c)> for all x, c: col2im is exactly im2col's transpose,
    which is what makes it the right backward pass."""
    (n, h, w, c), (kh, kw), (sh, sw), _, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h + kh - 1, w + kw - 1, c))      # the window always fits
    cols = im2col(x, kh, kw, sh, sw)
    c = rng.standard_normal(cols.shape)
    assert np.isclose(np.sum(cols * c), np.sum(x * col2im(c, x.shape, sh, sw)), rtol=1e-12)


def test_im2col_layout():
    """cols[n, oh, ow, i, j, c] = x[n, oh*sh + i, ow*sw + j, c], checked entry by entry."""
    x = np.arange(2 * 5 * 6 * 2, dtype=np.float64).reshape(2, 5, 6, 2)
    cols = im2col(x, 2, 3, 2, 1)
    for n, oh, ow, i, j, c in np.ndindex(*cols.shape):
        assert cols[n, oh, ow, i, j, c] == x[n, oh * 2 + i, ow + j, c]


def test_naive_conv_by_hand():
    """A 1-channel 3x3 input, 2x2 kernel of ones: each output is its window's sum."""
    x = np.arange(9, dtype=np.float64).reshape(1, 3, 3, 1)
    y = naive.conv2d_forward(x, np.ones((2, 2, 1, 1)), np.array([0.5]))
    np.testing.assert_array_equal(y[0, :, :, 0], [[8.5, 12.5], [20.5, 24.5]])


# --- batch normalisation: the layer's compact backward against the graph, node by node ----
BN_TOL = 1e-12
BN_EPSILON = 1e-2     # not the default: a layer that ignored it would be off by ~1e-3


def assert_relatively_close(actual, expected, what):
    assert actual.shape == expected.shape, what
    err = np.max(np.abs(actual - expected))
    scale = np.max(np.abs(expected))
    assert err <= BN_TOL * scale, f"{what}: max abs error {err:.3e}, {err / scale:.1e} relative"


@pytest.mark.parametrize("shape", [(3, 4, 5, 2), (8, 3)], ids=["NHWC", "NC"])
def test_batch_norm_matches_naive(shape):
    rng = np.random.default_rng(7)
    x = 3.0 + 2.0 * rng.standard_normal(shape)      # away from zero mean and unit variance
    bn = BatchNormalization(epsilon=BN_EPSILON, dtype="float64")
    bn(x)                                           # builds gamma and beta
    gamma = bn.params["gamma"]
    beta = bn.params["beta"]
    gamma[...] = rng.uniform(0.5, 2.0, gamma.shape)
    beta[...] = rng.standard_normal(beta.shape)

    y, cache = bn.forward(x, training=True)
    y_ref, graph = naive.batch_norm_forward(x, gamma, beta, epsilon=BN_EPSILON)
    assert_relatively_close(y, y_ref, "y")

    dy = rng.standard_normal(shape)
    bn.zero_grads()
    dx = bn.backward(dy, cache)
    dx_ref, dgamma_ref, dbeta_ref = naive.batch_norm_backward(dy, graph)
    assert_relatively_close(dx, dx_ref, "dx")
    assert_relatively_close(bn.grads["gamma"], dgamma_ref, "dgamma")
    assert_relatively_close(bn.grads["beta"], dbeta_ref, "dbeta")


def test_naive_batch_norm_matches_finite_differences():
    rng = np.random.default_rng(8)
    x = 1.0 + rng.standard_normal((2, 3, 3, 2))
    gamma, beta = rng.uniform(0.5, 2.0, 2), rng.standard_normal(2)

    def forward(x, gamma, beta):
        return naive.batch_norm_forward(x, gamma, beta, BN_EPSILON)[0]

    def backward(dy):
        _, graph = naive.batch_norm_forward(x, gamma, beta, BN_EPSILON)
        return naive.batch_norm_backward(dy, graph)

    report = gradcheck.check_gradients(forward, backward, [x, gamma, beta])
    assert report.worst() < 1e-7, f"input 0 = x, 1 = gamma, 2 = beta:\n{report}"


def test_naive_batch_norm_by_hand():
    """One channel, x = (1, 3): mu = 2, xc = (-1, 1), var = 1; with epsilon = 3,
    inv_std = 1/2 and xhat = (-1/2, 1/2).  For dy = (1, 0), gamma = 2:
    dxhat = (2, 0), dinv_std = -2, dvar = -2 * -1/2 * 4^(-3/2) = 1/8,
    dxc = (1, 0) + (1/8) * 2 * (-1, 1) / 2 = (7/8, 1/8), dmu = -1,
    dx = dxc - 1/2 = (3/8, -3/8): it sums to zero, as a shift of x moves no y."""
    x = np.array([[1.0], [3.0]])
    y, graph = naive.batch_norm_forward(x, np.array([2.0]), np.array([0.5]), epsilon=3.0)
    np.testing.assert_allclose(y, [[-0.5], [1.5]], rtol=1e-15)
    dx, dgamma, dbeta = naive.batch_norm_backward(np.array([[1.0], [0.0]]), graph)
    np.testing.assert_allclose(dx, [[0.375], [-0.375]], rtol=1e-15)
    np.testing.assert_allclose(dgamma, [-0.5], rtol=1e-15)
    np.testing.assert_allclose(dbeta, [1.0], rtol=1e-15)
