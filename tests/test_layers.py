"""Keras semantics of the layers: shapes, padding rules, BN statistics, names,
dtypes, parameter names and initialisers, checked against hand-computed values
(the layers on ``--device``; initialisers make NumPy arrays by design)."""
import numpy as np
import pytest
from conftest import on_cpu

import minires
from minires import backend, initializers, kernels
from minires.backend import to_device
from minires.layers import (Activation, Add, AveragePooling2D, BatchNormalization, Concatenate,
                            Conv2D, Dense, GlobalAveragePooling2D, MaxPooling2D, ReLU, Softmax,
                            ZeroPadding2D, clear_session)
from minires.losses import SoftmaxCrossEntropy
from minires.padding import window_padding


@pytest.mark.parametrize("size,kernel,stride,padding,expected", [
    (224, 7, 2, "same", (2, 3, 112)),    # TensorFlow puts the extra pixel after
    (8, 3, 2, "same", (0, 1, 4)),
    (7, 3, 2, "same", (1, 1, 4)),
    (5, 2, 1, "same", (0, 1, 5)),
    (6, 4, 1, "same", (1, 2, 6)),
    (5, 1, 2, "same", (0, 0, 3)),
    (230, 7, 2, "valid", (0, 0, 112)),   # ResNet-50's stem after ZeroPadding2D(3)
    (112, 3, 2, "valid", (0, 0, 55)),    # max-pool without pool1_pad
    (114, 3, 2, "valid", (0, 0, 56)),    # with pool1_pad
])
def test_keras_padding_rule(size, kernel, stride, padding, expected):
    assert window_padding(size, kernel, stride, padding) == expected


@pytest.mark.parametrize("size,expected", [(7, 4), (8, 4), (9, 5)])
def test_stride2_same_conv_output_is_ceil_of_half(rng, device, size, expected):
    x = to_device(rng.standard_normal((1, size, size, 2)), device)
    y = Conv2D(3, 3, strides=2, padding="same")(x)
    assert y.shape == (1, expected, expected, 3)


def test_same_conv_pads_after_on_even_inputs(device):
    """Stride 2, 3x3 on 4x4: TF pads 0 before, 1 after, so output (0, 0) sees
    rows/cols 0..2 of the input exactly (no padding in that window)."""
    x = np.arange(16, dtype=np.float64).reshape(1, 4, 4, 1)
    conv = Conv2D(1, 3, strides=2, padding="same", use_bias=False, dtype="float64")
    conv(to_device(x, device))
    conv.params["kernel"][...] = 1.0
    y = on_cpu(conv(to_device(x, device)))[0, :, :, 0]
    assert y[0, 0] == x[0, 0:3, 0:3, 0].sum()
    assert y[1, 1] == x[0, 2:4, 2:4, 0].sum()             # the zero row/col lie after


def test_conv2d_parameters_follow_keras():
    conv = Conv2D(8, (3, 5), name="res2a_branch2b")
    conv(np.zeros((1, 6, 6, 4), np.float32))
    assert list(conv.params) == ["kernel", "bias"]
    assert conv.params["kernel"].shape == (3, 5, 4, 8) and conv.params["bias"].shape == (8,)
    assert conv.trainable_names() == ["kernel", "bias"]
    np.testing.assert_array_equal(conv.params["bias"], 0)


def test_batch_norm_moving_statistics_use_keras_momentum(device):
    """moving = momentum * moving + (1 - momentum) * batch, with the biased variance."""
    bn = BatchNormalization(momentum=0.9, epsilon=1e-3, dtype="float64")
    x = np.array([1.0, 2.0, 3.0, 6.0]).reshape(2, 1, 2, 1)       # mean 3, biased var 3.5
    y = on_cpu(bn(to_device(x, device), training=True))
    assert list(bn.params) == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert bn.trainable_names() == ["gamma", "beta"]
    np.testing.assert_allclose(on_cpu(bn.params["moving_mean"]), [0.9 * 0 + 0.1 * 3.0])
    np.testing.assert_allclose(on_cpu(bn.params["moving_variance"]), [0.9 * 1 + 0.1 * 3.5])
    np.testing.assert_allclose(y.ravel(), (x.ravel() - 3.0) / np.sqrt(3.5 + 1e-3))


def test_batch_norm_inference_uses_moving_statistics(device):
    bn = BatchNormalization(epsilon=1.001e-5, dtype="float64")
    x = np.array([1.0, -2.0, 0.5, 4.0]).reshape(1, 2, 1, 2)
    bn(to_device(x, device))
    for name, value in [("gamma", [2.0, 0.5]), ("beta", [1.0, -1.0]),
                        ("moving_mean", [0.5, 1.0]), ("moving_variance", [4.0, 0.25])]:
        bn.params[name][...] = to_device(np.array(value), device)
    y = on_cpu(bn(to_device(x, device), training=False))
    expected = np.array([2.0, 0.5]) * (x - [0.5, 1.0]) / np.sqrt(np.array([4.0, 0.25]) + 1.001e-5) + [1.0, -1.0]
    np.testing.assert_allclose(y, expected)
    np.testing.assert_array_equal(on_cpu(bn.params["moving_mean"]), [0.5, 1.0])   # untouched


def test_frozen_batch_norm_uses_moving_statistics_while_training(rng, device):
    bn = BatchNormalization()
    x = to_device(rng.standard_normal((4, 3, 3, 2)).astype(np.float32), device)
    bn(x)
    bn.trainable = False
    np.testing.assert_array_equal(on_cpu(bn(x, training=True)),
                                  on_cpu(bn(x, training=False)))
    np.testing.assert_array_equal(on_cpu(bn.params["moving_mean"]), 0)


def test_keras_defaults():
    bn, pool, conv = BatchNormalization(), MaxPooling2D(), Conv2D(4, 3)
    assert (bn.axis, bn.momentum, bn.epsilon) == (-1, 0.99, 1e-3)
    assert (pool.pool_size, pool.strides, pool.padding) == ((2, 2), (2, 2), "valid")
    assert (conv.strides, conv.padding, conv.use_bias, conv.activation) == ((1, 1), "valid", True, None)
    assert isinstance(conv.kernel_initializer, initializers.GlorotUniform)


def test_automatic_names_follow_keras():
    names = [Conv2D(1, 1).name, Conv2D(1, 1).name, BatchNormalization().name, MaxPooling2D().name,
             ReLU().name, GlobalAveragePooling2D().name, ZeroPadding2D().name, Dense(1).name,
             Conv2D(1, 1, name="mine").name, Conv2D(1, 1).name]
    assert names == ["conv2d", "conv2d_1", "batch_normalization", "max_pooling2d", "re_lu",
                     "global_average_pooling2d", "zero_padding2d", "dense", "mine", "conv2d_2"]
    clear_session()
    assert Conv2D(1, 1).name == "conv2d"


def test_float32_by_default_and_float64_on_request(rng, device):
    x = to_device(rng.standard_normal((1, 4, 4, 2)), device)     # float64 data
    conv = Conv2D(2, 3)
    assert conv(x).dtype == np.float32 and conv.params["kernel"].dtype == np.float32
    with backend.floatx_scope("float64"):
        conv64 = Conv2D(2, 3)
    assert minires.floatx() == "float32"
    assert conv64(x).dtype == np.float64 and conv64.params["kernel"].dtype == np.float64


def test_max_pool_same_padding_never_wins(device):
    x = -np.arange(1, 10, dtype=np.float64).reshape(1, 3, 3, 1)      # all negative
    y = on_cpu(MaxPooling2D(2, padding="same", dtype="float64")(to_device(x, device)))
    np.testing.assert_array_equal(y[0, :, :, 0], [[-1, -3], [-7, -9]])


def test_average_pool_same_padding_is_not_counted(device):
    x = to_device(np.ones((1, 6, 5, 2), np.float32), device)
    np.testing.assert_allclose(on_cpu(AveragePooling2D(3, strides=2, padding="same")(x)), 1.0)


def test_overlapping_max_pool_sends_gradient_to_the_shared_winner(device):
    """3x3/2 windows overlap on a row and column; a maximum in the overlap wins
    all four windows and collects all four output gradients."""
    x = np.zeros((1, 5, 5, 1))
    x[0, 2, 2, 0] = 1.0
    pool = MaxPooling2D(3, 2, dtype="float64")
    _, cache = pool.forward(to_device(x, device))
    dx = on_cpu(pool.backward(to_device(np.arange(1.0, 5.0).reshape(1, 2, 2, 1), device), cache))
    assert dx[0, 2, 2, 0] == 1 + 2 + 3 + 4 and dx.sum() == 10


def test_zero_padding_layouts(device):
    x = to_device(np.ones((1, 2, 3, 1), np.float32), device)
    assert ZeroPadding2D(3)(x).shape == (1, 8, 9, 1)
    y = on_cpu(ZeroPadding2D(((1, 2), (0, 3)))(x))
    assert y.shape == (1, 5, 6, 1) and y.sum() == 6 and y[0, 1, 0, 0] == 1


def test_dense_applies_to_the_last_axis(rng, device):
    dense = Dense(4, dtype="float64")
    x = rng.standard_normal((2, 3, 5))
    y = on_cpu(dense(to_device(x, device)))
    np.testing.assert_allclose(y, x @ on_cpu(dense.params["kernel"]) + on_cpu(dense.params["bias"]))


def test_add_and_concatenate_values(device):
    a, b, c = (to_device(np.full((1, 2, 2, k), float(k), np.float32), device) for k in (1, 2, 3))
    np.testing.assert_array_equal(on_cpu(Add()([a, a, a])), 3 * on_cpu(a))
    y = on_cpu(Concatenate()([a, b, c]))
    assert y.shape == (1, 2, 2, 6)
    np.testing.assert_array_equal(y[0, 0, 0], [1, 2, 2, 3, 3, 3])


def test_activations_by_hand(device):
    z = np.array([[-2.0, 0.0, 3.0]])
    on = to_device(z, device)
    np.testing.assert_array_equal(on_cpu(Activation("relu")(on)), [[0, 0, 3]])
    np.testing.assert_allclose(on_cpu(Activation("sigmoid", dtype="float64")(on)),
                               1 / (1 + np.exp(-z)))
    np.testing.assert_allclose(on_cpu(Softmax(dtype="float64")(on)), np.exp(z) / np.exp(z).sum())
    assert np.isfinite(on_cpu(Softmax()(to_device(np.array([[1000.0, -1000.0]]), device)))).all()


def test_cross_entropy_is_stable_and_exact(device):
    loss = SoftmaxCrossEntropy()
    zeros = to_device(np.zeros((2, 4)), device)
    big = to_device(np.array([[1000.0, 0.0], [0.0, 1000.0]]), device)
    assert float(loss.forward(zeros, np.array([0, 3]))) == pytest.approx(np.log(4))
    assert float(loss.forward(big, np.array([1, 1]))) == pytest.approx(500.0)    # no inf, no nan
    np.testing.assert_allclose(on_cpu(loss.backward()), [[0.5, -0.5], [0.0, 0.0]], atol=1e-12)


def test_glorot_uniform_is_seeded_and_bounded():
    a = initializers.glorot_uniform(seed=0)((3, 3, 16, 32))
    np.testing.assert_array_equal(a, initializers.GlorotUniform(seed=0)((3, 3, 16, 32)))
    limit = np.sqrt(6 / (9 * 16 + 9 * 32))
    assert np.abs(a).max() <= limit and np.abs(a).max() > 0.95 * limit


def test_he_normal_has_the_right_spread():
    w = initializers.he_normal(seed=1)((3, 3, 64, 64))
    fan_in = 3 * 3 * 64
    assert np.abs(w).max() <= 2 * np.sqrt(2 / fan_in) / 0.87962566103423978
    assert w.std() == pytest.approx(np.sqrt(2 / fan_in), rel=0.02)


def test_unseeded_initialisers_follow_set_random_seed():
    minires.set_random_seed(7)
    a = Conv2D(2, 3)
    a(np.zeros((1, 3, 3, 1), np.float32))
    minires.set_random_seed(7)
    b = Conv2D(2, 3)
    b(np.zeros((1, 3, 3, 1), np.float32))
    np.testing.assert_array_equal(a.params["kernel"], b.params["kernel"])


@pytest.mark.parametrize("kernel,strides", [(3, 1), (3, 2), (1, 1), (1, 2)])
@pytest.mark.parametrize("megabytes", [256, 1e-6])             # 1e-6: one image at a time
def test_chunked_conv_kernel_equals_the_layer(rng, device, kernel, strides, megabytes, each_kernel_path):
    """kernels.conv2d (the fast path's convolution, in chunks of images under the
    im2col memory cap) gives Conv2D's own product, to summation order."""
    conv = Conv2D(4, kernel, strides=strides, padding="same", use_bias=False, dtype="float64")
    x = to_device(rng.standard_normal((5, 9, 9, 3)), device)
    whole = on_cpu(conv(x))
    previous = backend.im2col_limit()
    backend.set_im2col_limit(megabytes)
    try:
        pads, _ = conv.pads(x.shape)
        chunked = on_cpu(kernels.conv2d(x, conv.params["kernel"], pads, conv.strides))
    finally:
        backend.set_im2col_limit(previous / (1 << 20))
    np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=1e-12 * np.abs(whole).max())
