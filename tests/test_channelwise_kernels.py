"""Batch norm and ReLU passes: the Numba loops against the NumPy reference
(kernels/channelwise.py), and the BN layer the same on both paths."""
import numpy as np
import pytest

from minires import backend, kernels
from minires.kernels import channelwise
from minires.layers import BatchNormalization

numba_kernels = pytest.importorskip("minires.kernels.numba_kernels", reason="Numba is not installed")

SHAPES = [(2, 5, 7, 3), (4, 56, 56, 64), (3, 9, 1030), (1, 1, 1, 2048)]


def sample(rng, shape, dtype, offset=0.0):
    return (rng.standard_normal(shape) * 2 + offset).astype(dtype)


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def relative(a, b):
    """Largest difference over the largest value (a variance of one image of one
    pixel is exactly 0 on every path)."""
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize("shape", SHAPES)
def test_moments_and_sums_are_float64_accurate(rng, shape):
    """In float32 the compiled sums accumulate in float64, so they sit at
    float32 rounding of the exact figure; NumPy's float32 sums are further off
    (2.8e-5 on a 32x56x56x256 batch) but within 1e-4."""
    x, dy = sample(rng, shape, np.float32, offset=3.0), sample(rng, shape, np.float32)
    exact_moments = channelwise.channel_moments(x.astype(np.float64), x.ndim - 1)
    exact_sums = channelwise.channel_sums(dy.astype(np.float64), x.astype(np.float64), x.ndim - 1)
    for exact, compiled, reference in (
            (exact_moments, numba_kernels.channel_moments(x, x.ndim - 1),
             channelwise.channel_moments(x, x.ndim - 1)),
            (exact_sums, numba_kernels.channel_sums(dy, x, x.ndim - 1),
             channelwise.channel_sums(dy, x, x.ndim - 1))):
        for want, got, ref in zip(exact, compiled, reference):
            assert got.dtype == np.float32
            assert relative(got, want) <= 1e-6
            assert relative(ref, want) <= 1e-4


@pytest.mark.parametrize("shape", SHAPES)
def test_numba_matches_reference_in_float64(rng, shape):
    x, dy = sample(rng, shape, np.float64, offset=1.0), sample(rng, shape, np.float64)
    c = shape[-1]
    mean, inv_std, gamma, beta = (rng.standard_normal(c) for _ in range(4))
    axis = x.ndim - 1
    calls = {"channel_moments": (x, axis), "channel_sums": (dy, x, axis),
             "normalize": (x, mean, inv_std, gamma, beta, axis),
             "batch_norm_dx": (dy, x, gamma, beta, mean, axis),
             "relu": (x - 1,), "relu_backward": (dy, x - 1),
             # the fused ReLU after batch norm: normalize's output, the two backward passes' mask
             "normalize relu": (x, mean, inv_std, gamma, beta, axis, True),
             "channel_sums relu": (dy, x, axis, (gamma, beta)),
             "batch_norm_dx relu": (dy, x, gamma, beta, mean, axis, (gamma, beta))}
    for name, args in calls.items():
        function = name.split()[0]
        compiled = as_tuple(getattr(numba_kernels, function)(*args))
        reference = as_tuple(getattr(channelwise, function)(*args))
        assert len(compiled) == len(reference), name
        for got, want in zip(compiled, reference):
            assert got.shape == want.shape and got.dtype == want.dtype, name
            assert relative(got, want) <= 1e-12, name


def test_the_fused_relus_mask_is_the_relus_own(rng):
    """normalize(relu=True) is relu(normalize), and the masked passes equal the
    plain ones on relu_backward's dy: the mask recomputed from xhat is exact."""
    x, dy = sample(rng, (4, 9, 9, 32), np.float32), sample(rng, (4, 9, 9, 32), np.float32)
    mean, var = numba_kernels.channel_moments(x, 3)
    inv_std, gamma, beta = 1 / np.sqrt(var + 1e-3), sample(rng, (32,), np.float32), sample(rng, (32,), np.float32)
    for module in (numba_kernels, channelwise):
        xhat, y = module.normalize(x, mean, inv_std, gamma, beta, 3)
        fused_xhat, fused_y = module.normalize(x, mean, inv_std, gamma, beta, 3, relu=True)
        np.testing.assert_array_equal(fused_xhat, xhat)
        np.testing.assert_array_equal(fused_y, module.relu(y))
        dz = module.relu_backward(dy, fused_y)
        for plain, masked in zip(module.channel_sums(dz, xhat, 3), module.channel_sums(dy, xhat, 3, (gamma, beta))):
            np.testing.assert_array_equal(masked, plain)
        np.testing.assert_array_equal(module.batch_norm_dx(dy, xhat, gamma, beta, mean, 3, (gamma, beta)),
                                      module.batch_norm_dx(dz, xhat, gamma, beta, mean, 3))


def test_relu_keeps_nan_on_both_paths():
    for module in (numba_kernels, channelwise):
        z = np.array([[-1.0, np.nan, 2.0]], np.float32)
        np.testing.assert_array_equal(module.relu(z), [[0, np.nan, 2]])
        dz = module.relu_backward(np.array([[np.nan, 1.0, 3.0]], np.float32), z)
        np.testing.assert_array_equal(dz, [[np.nan, 0, 3]])     # NaN * 0 stays NaN
        module.add_relu_(z, np.zeros(3, np.float32), None, True)    # the fused epilogue's ReLU
        np.testing.assert_array_equal(z, [[0, np.nan, 2]])


@pytest.mark.parametrize("case", ["channel first", "not contiguous", "float16"])
def test_other_layouts_take_the_reference(rng, case, each_kernel_path):
    """The compiled loops only see C-ordered float32/64 with the channel last;
    anything else goes to the array code and gives the same answer."""
    x = sample(rng, (2, 6, 4, 5), np.float32)
    axis = 3
    if case == "channel first":
        axis = 1
    elif case == "not contiguous":
        x = x[:, ::2]
    else:
        x = x.astype(np.float16)
    mean, var = kernels.channel_moments(x, axis)
    other = tuple(a for a in range(4) if a != axis)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=other), rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(var, x.astype(np.float64).var(axis=other), rtol=1e-2)
    s, m1, m2 = (sample(rng, (x.shape[axis],), x.dtype) for _ in range(3))
    np.testing.assert_array_equal(kernels.batch_norm_dx(x, x, s, m1, m2, axis),
                                  channelwise.batch_norm_dx(x, x, s, m1, m2, axis))


def test_batch_norm_layer_agrees_across_kernel_paths(rng):
    """A training-mode forward and backward in float64: the same outputs, input
    gradient, parameter gradients and moving statistics on both paths."""
    x, dy = sample(rng, (4, 6, 6, 8), np.float64, offset=2.0), sample(rng, (4, 6, 6, 8), np.float64)
    results = {}
    previous = backend.kernel_path()
    try:
        for path in ("numpy", "numba"):
            backend.set_kernel_path(path)
            layer = BatchNormalization(momentum=0.9, dtype="float64")
            y, cache = layer.forward(x, training=True)
            dx = layer.backward(dy, cache)
            results[path] = [y, dx, layer.grads["gamma"], layer.grads["beta"],
                             layer.params["moving_mean"], layer.params["moving_variance"]]
    finally:
        backend.set_kernel_path(previous)
    for got, want in zip(results["numba"], results["numpy"]):
        assert relative(got, want) <= 1e-12


@pytest.mark.parametrize("offset", [0.0, 1e3, 1e5])
def test_one_pass_moments_hold_when_the_mean_dwarfs_the_spread(rng, offset):
    """The compiled moments shift by the first row and sum once (numba_kernels.channel_moments):
    with a mean 1e5 times the standard deviation the variance keeps float32 accuracy."""
    x = (rng.standard_normal((64, 28, 28, 16)) + offset).astype(np.float32)
    exact_mean, exact_var = channelwise.channel_moments(x.astype(np.float64), 3)
    mean, var = numba_kernels.channel_moments(x, 3)
    assert relative(mean, exact_mean) <= 1e-6 and relative(var, exact_var) <= 1e-6
