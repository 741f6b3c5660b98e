"""minires against PyTorch autograd, in float64: forward outputs, dL/dx and
dL/d(params) of each layer, on random data and a random upstream gradient.

PyTorch is an independent oracle: its conv, batch norm and pooling kernels and
its autograd share no code with minires.  The translation of the Keras
conventions (channels-last, (kh, kw, in, out) kernels, TensorFlow's asymmetric
'same' padding, Keras's BN momentum, 'same' pooling that ignores the padding)
is written out here from the rules themselves; nothing is imported from
minires.padding, so a wrong padding rule there shows up as a mismatch.

The whole module is skipped where torch is not installed.
"""
import math
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from minires.layers import (AveragePooling2D, BatchNormalization, Conv2D, Dense,  # noqa: E402
                            GlobalAveragePooling2D, MaxPooling2D, ReLU)

RTOL, ATOL = 1e-10, 1e-12


# --- helpers -----------------------------------------------------------------
def close(actual, expected, what):
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else expected
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=what)


def close_batch_norm(bn, y, dx, yt, xt, gt, bt):
    """minires's BN output and gradients against torch's (after its backward)."""
    close(y, yt, "forward")
    close(dx, xt.grad, "dL/dx")
    close(bn.grads["gamma"], gt.grad, "dL/dgamma")
    close(bn.grads["beta"], bt.grad, "dL/dbeta")


def leaf(a):
    """A float64 torch leaf tensor holding a copy of NumPy ``a``, recording gradients."""
    return torch.tensor(np.array(a, dtype=np.float64), dtype=torch.float64, requires_grad=True)


def to_nchw(t):
    return t.permute(0, 3, 1, 2)


def to_nhwc(t):
    return t.permute(0, 2, 3, 1)


def torch_backward(y, dy):
    """Backpropagate the upstream gradient ``dy`` (NumPy) from torch output ``y``."""
    (y * torch.from_numpy(dy)).sum().backward()


def keras_same_pads(size, kernel, stride):
    """TensorFlow's 'same': out = ceil(n/s); the odd pixel of padding goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def torch_pad_arg(shape_hw, kernel, strides, padding):
    """F.pad's (left, right, top, bottom) for the given Keras padding."""
    if padding == "valid":
        return (0, 0, 0, 0)
    top, bottom = keras_same_pads(shape_hw[0], kernel[0], strides[0])
    left, right = keras_same_pads(shape_hw[1], kernel[1], strides[1])
    return (left, right, top, bottom)


def pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def distinct(rng, shape):
    """Random values without ties (a shuffled grid), so max-pooling has one winner."""
    size = int(np.prod(shape))
    return ((rng.permutation(size) - size / 2 + 0.5) / size * 4.0).reshape(shape)


# --- Conv2D ------------------------------------------------------------------
CONV_CASES = [
    (kernel, stride, padding, hw, use_bias)
    for kernel in (1, 2, 3, 4, 7)
    for stride in (1, 2)
    for padding in ("valid", "same")
    for hw in ((8, 8), (9, 9), (7, 10))
    for use_bias in (True, False)
] + [
    # rectangular kernels and strides, the ResNet-50 stem's shape (scaled down)
    ((3, 5), (1, 2), "same", (9, 8), True),
    ((5, 2), (2, 3), "same", (11, 7), True),
    ((2, 3), (3, 1), "valid", (10, 9), False),
    (7, 2, "same", (16, 16), True),
    (3, 3, "same", (10, 11), True),
]


def conv_id(case):
    kernel, stride, padding, hw, bias = case
    return f"k{kernel}-s{stride}-{padding}-{hw[0]}x{hw[1]}-{'bias' if bias else 'nobias'}"


def run_conv_pair(rng, kernel, stride, padding, hw, use_bias, activation=None, n=2, c_in=3, c_out=4):
    x = rng.standard_normal((n, *hw, c_in))
    conv = Conv2D(c_out, kernel, strides=stride, padding=padding, use_bias=use_bias,
                  activation=activation, dtype="float64")
    conv(x)                                                           # builds the weights
    kh, kw = pair(kernel)
    conv.params["kernel"] = rng.standard_normal((kh, kw, c_in, c_out))
    if use_bias:
        conv.params["bias"] = rng.standard_normal(c_out)             # non-zero, unlike the init
    y, cache = conv.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy, cache)

    xt, wt = leaf(x), leaf(conv.params["kernel"])
    bt = leaf(conv.params["bias"]) if use_bias else None
    xpad = F.pad(to_nchw(xt), torch_pad_arg(hw, (kh, kw), pair(stride), padding))
    yt = F.conv2d(xpad, wt.permute(3, 2, 0, 1), bt, stride=pair(stride))
    if activation == "relu":
        yt = F.relu(yt)
    yt = to_nhwc(yt)
    torch_backward(yt, dy)
    return conv, y, dx, yt, xt, wt, bt


@pytest.mark.parametrize("case", CONV_CASES, ids=conv_id)
def test_conv2d_matches_torch(case):
    kernel, stride, padding, hw, use_bias = case
    rng = np.random.default_rng(zlib.crc32(conv_id(case).encode()))
    conv, y, dx, yt, xt, wt, bt = run_conv_pair(rng, *case)
    close(y, yt, "forward")
    close(dx, xt.grad, "dL/dx")
    close(conv.grads["kernel"], wt.grad, "dL/dkernel")
    if use_bias:
        close(conv.grads["bias"], bt.grad, "dL/dbias")
    else:
        assert "bias" not in conv.params and "bias" not in conv.grads


def test_conv2d_relu_activation_matches_torch(rng):
    """Conv2D(activation='relu'): backward masks dy with the output's sign."""
    conv, y, dx, yt, xt, wt, bt = run_conv_pair(rng, 3, 2, "same", (9, 8), True, activation="relu")
    assert (y == 0).any() and (y > 0).any()
    close(y, yt, "forward")
    close(dx, xt.grad, "dL/dx")
    close(conv.grads["kernel"], wt.grad, "dL/dkernel")
    close(conv.grads["bias"], bt.grad, "dL/dbias")


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5])
def test_stride1_same_conv_agrees_with_torchs_own_same_padding(rng, kernel):
    """torch's padding='same' (stride 1 only) also puts the odd pixel after: a
    check of the padding rule that uses no padding arithmetic of ours."""
    x = rng.standard_normal((2, 7, 6, 3))
    conv = Conv2D(4, kernel, padding="same", dtype="float64")
    conv(x)
    conv.params["kernel"] = rng.standard_normal(conv.params["kernel"].shape)
    conv.params["bias"] = rng.standard_normal(4)
    y, cache = conv.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy, cache)
    xt, wt, bt = leaf(x), leaf(conv.params["kernel"]), leaf(conv.params["bias"])
    yt = to_nhwc(F.conv2d(to_nchw(xt), wt.permute(3, 2, 0, 1), bt, padding="same"))
    torch_backward(yt, dy)
    close(y, yt, "forward")
    close(dx, xt.grad, "dL/dx")
    close(conv.grads["kernel"], wt.grad, "dL/dkernel")


# --- BatchNormalization --------------------------------------------------------
def make_bn(rng, x, momentum, epsilon, axis=-1, trainable=True):
    bn = BatchNormalization(axis=axis, momentum=momentum, epsilon=epsilon, dtype="float64",
                            trainable=trainable)
    bn(x)                                                             # builds
    c = x.shape[axis]
    bn.params["gamma"] = rng.uniform(0.5, 2.0, c) * rng.choice([-1, 1], c)
    bn.params["beta"] = rng.standard_normal(c)
    bn.params["moving_mean"] = rng.standard_normal(c)
    bn.params["moving_variance"] = rng.uniform(0.2, 3.0, c)
    return bn


BN_SHAPES = [(4, 5, 6, 3), (3, 1, 1, 5), (2, 7, 4, 6), (16, 8)]


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("momentum,epsilon", [(0.99, 1e-3), (0.9, 1.001e-5)])
def test_batch_norm_matches_torch(rng, shape, training, momentum, epsilon):
    # a non-zero mean and a non-unit spread, so the statistics matter
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3.0, shape[-1]) + rng.standard_normal(shape[-1])
    bn = make_bn(rng, x, momentum, epsilon)
    mean0, var0 = bn.params["moving_mean"].copy(), bn.params["moving_variance"].copy()
    y, cache = bn.forward(x, training=training)
    dy = rng.standard_normal(y.shape)
    dx = bn.backward(dy, cache)

    xt, gt, bt = leaf(x), leaf(bn.params["gamma"]), leaf(bn.params["beta"])
    running_mean, running_var = torch.tensor(mean0), torch.tensor(var0)
    x_ncl = to_nchw(xt) if x.ndim == 4 else xt
    yt = F.batch_norm(x_ncl, running_mean, running_var, gt, bt, training=training,
                      momentum=1.0 - momentum, eps=epsilon)          # torch weights the NEW value
    yt = to_nhwc(yt) if x.ndim == 4 else yt
    torch_backward(yt, dy)

    close_batch_norm(bn, y, dx, yt, xt, gt, bt)

    close(bn.params["moving_mean"], running_mean, "moving_mean")
    if training:
        # torch blends in the UNBIASED variance, Keras the biased one: undo
        # torch's m/(m-1) factor to get the Keras value from torch's update.
        m = x.size // x.shape[-1]
        torch_batch_var_unbiased = (running_var.numpy() - momentum * var0) / (1.0 - momentum)
        expected_var = momentum * var0 + (1.0 - momentum) * torch_batch_var_unbiased * (m - 1) / m
        close(bn.params["moving_variance"], expected_var, "moving_variance")
        # and directly, from torch's biased variance
        biased = x_ncl.detach().transpose(0, 1).reshape(x.shape[-1], -1).var(dim=1, unbiased=False)
        close(bn.params["moving_variance"], momentum * var0 + (1.0 - momentum) * biased.numpy(),
              "moving_variance (biased)")
        assert not np.allclose(bn.params["moving_mean"], mean0)      # it did move
    else:
        close(bn.params["moving_variance"], var0, "moving_variance")
        np.testing.assert_array_equal(bn.params["moving_mean"], mean0)


def test_batch_norm_channels_first_axis_matches_torch(rng):
    """axis=1 on (N, C, H, W) data is torch's own layout: no permutes at all."""
    x = rng.standard_normal((3, 4, 5, 6)) * 2.0 + 1.0
    bn = make_bn(rng, x, 0.99, 1e-3, axis=1)
    mean0, var0 = bn.params["moving_mean"].copy(), bn.params["moving_variance"].copy()
    y, cache = bn.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = bn.backward(dy, cache)
    xt, gt, bt = leaf(x), leaf(bn.params["gamma"]), leaf(bn.params["beta"])
    running_mean = torch.tensor(mean0)
    yt = F.batch_norm(xt, running_mean, torch.tensor(var0), gt, bt, training=True,
                      momentum=0.01, eps=1e-3)
    torch_backward(yt, dy)
    close_batch_norm(bn, y, dx, yt, xt, gt, bt)
    close(bn.params["moving_mean"], running_mean, "moving_mean")


def test_frozen_batch_norm_uses_moving_statistics_while_training(rng):
    """trainable=False: training=True still normalises with the moving statistics
    (Keras 2.1.3+), i.e. torch's eval mode, and the statistics stay put."""
    x = rng.standard_normal((4, 3, 3, 5)) + 2.0
    bn = make_bn(rng, x, 0.99, 1e-3, trainable=False)
    mean0, var0 = bn.params["moving_mean"].copy(), bn.params["moving_variance"].copy()
    y, cache = bn.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = bn.backward(dy, cache)
    xt = leaf(x)
    yt = to_nhwc(F.batch_norm(to_nchw(xt), torch.tensor(mean0), torch.tensor(var0),
                              torch.tensor(bn.params["gamma"]), torch.tensor(bn.params["beta"]),
                              training=False, eps=1e-3))
    torch_backward(yt, dy)
    close(y, yt, "forward")
    close(dx, xt.grad, "dL/dx")
    np.testing.assert_array_equal(bn.params["moving_mean"], mean0)
    np.testing.assert_array_equal(bn.params["moving_variance"], var0)


# --- MaxPooling2D --------------------------------------------------------------
POOL_CASES = [
    (3, 2, "valid", (9, 9)),
    (3, 2, "valid", (8, 10)),
    (3, 2, "same", (9, 9)),
    (3, 2, "same", (8, 8)),
    (3, 2, "same", (7, 10)),
    (2, None, "valid", (8, 8)),
    (2, None, "valid", (9, 7)),
    (2, None, "same", (9, 7)),
    (3, 1, "same", (6, 7)),
    ((2, 3), (1, 2), "same", (7, 8)),
    (3, None, "same", (8, 10)),
]


def pool_id(case):
    pool, stride, padding, hw = case
    return f"p{pool}-s{stride}-{padding}-{hw[0]}x{hw[1]}"


@pytest.mark.parametrize("case", POOL_CASES, ids=pool_id)
def test_max_pooling_matches_torch(case):
    pool, stride, padding, hw = case
    rng = np.random.default_rng(zlib.crc32(pool_id(case).encode()))
    x = distinct(rng, (2, *hw, 3))
    layer = MaxPooling2D(pool, strides=stride, padding=padding, dtype="float64")
    y, cache = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy, cache)

    window = pair(pool)
    strides = window if stride is None else pair(stride)
    xt = leaf(x)
    xpad = F.pad(to_nchw(xt), torch_pad_arg(hw, window, strides, padding), value=-math.inf)
    yt = to_nhwc(F.max_pool2d(xpad, window, strides))
    torch_backward(yt, dy)
    close(y, yt, "forward")
    close(dx, xt.grad, "dL/dx")
    assert np.isfinite(y).all()


def test_max_pooling_same_with_all_negative_inputs_ignores_padding(rng):
    """If the padding were zeros, it would win every border window here.
    distinct() lies in (-2, 2) with no ties; shifted, every value is below -1."""
    x = distinct(rng, (1, 7, 8, 2)) - 3.0
    layer = MaxPooling2D(3, strides=2, padding="same", dtype="float64")
    y, cache = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy, cache)
    xt = leaf(x)
    xpad = F.pad(to_nchw(xt), torch_pad_arg((7, 8), (3, 3), (2, 2), "same"), value=-math.inf)
    yt = to_nhwc(F.max_pool2d(xpad, 3, 2))
    torch_backward(yt, dy)
    assert (y < 0).all()
    close(y, yt, "forward")
    close(dx, xt.grad, "dL/dx")


# --- AveragePooling2D ------------------------------------------------------------
AVG_CASES = POOL_CASES + [(2, 1, "same", (5, 6)), (4, 3, "same", (10, 11))]


def torch_keras_avg_pool(x_nchw, window, strides, pad):
    """Keras 'same' average: the sum over the window's real pixels over their count."""
    ones = torch.ones_like(x_nchw[:1, :1])
    sums = F.avg_pool2d(F.pad(x_nchw, pad), window, strides) * (window[0] * window[1])
    counts = F.avg_pool2d(F.pad(ones, pad), window, strides) * (window[0] * window[1])
    return sums / counts


@pytest.mark.parametrize("case", AVG_CASES, ids=pool_id)
def test_average_pooling_matches_torch(case):
    pool, stride, padding, hw = case
    rng = np.random.default_rng(zlib.crc32(pool_id(case).encode()) + 1)
    x = rng.standard_normal((2, *hw, 3))
    layer = AveragePooling2D(pool, strides=stride, padding=padding, dtype="float64")
    y, cache = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy, cache)

    window = pair(pool)
    strides = window if stride is None else pair(stride)
    xt = leaf(x)
    if padding == "valid":
        yt = F.avg_pool2d(to_nchw(xt), window, strides)
    else:
        yt = torch_keras_avg_pool(to_nchw(xt), window, strides,
                                  torch_pad_arg(hw, window, strides, padding))
    yt = to_nhwc(yt)
    torch_backward(yt, dy)
    close(y, yt, "forward")
    close(dx, xt.grad, "dL/dx")


@pytest.mark.parametrize("hw", [(6, 7), (5, 5)])
def test_average_pooling_same_symmetric_matches_count_include_pad_false(rng, hw):
    """3x3 stride 1 'same' pads 1 on every side, which torch can do itself:
    avg_pool2d(padding=1, count_include_pad=False) is exactly Keras's rule."""
    x = rng.standard_normal((2, *hw, 3))
    layer = AveragePooling2D(3, strides=1, padding="same", dtype="float64")
    y, cache = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy, cache)
    xt = leaf(x)
    yt = to_nhwc(F.avg_pool2d(to_nchw(xt), 3, 1, padding=1, count_include_pad=False))
    torch_backward(yt, dy)
    close(y, yt, "forward")
    close(dx, xt.grad, "dL/dx")


def test_global_average_pooling_matches_torch(rng):
    x = rng.standard_normal((3, 5, 7, 4))
    layer = GlobalAveragePooling2D(dtype="float64")
    y, cache = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy, cache)
    xt = leaf(x)
    yt = F.adaptive_avg_pool2d(to_nchw(xt), 1).flatten(1)
    torch_backward(yt, dy)
    close(y, yt, "forward")
    close(dx, xt.grad, "dL/dx")


# --- Dense -----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5, 7), (1, 3), (2, 3, 6)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid"])
def test_dense_matches_torch(rng, shape, use_bias, activation):
    units = 4
    x = rng.standard_normal(shape)
    dense = Dense(units, use_bias=use_bias, activation=activation, dtype="float64")
    dense(x)
    dense.params["kernel"] = rng.standard_normal((shape[-1], units))
    if use_bias:
        dense.params["bias"] = rng.standard_normal(units)
    y, cache = dense.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    dx = dense.backward(dy, cache)

    xt, wt = leaf(x), leaf(dense.params["kernel"])
    bt = leaf(dense.params["bias"]) if use_bias else None
    yt = F.linear(xt, wt.T, bt)
    yt = {None: lambda t: t, "relu": F.relu, "tanh": torch.tanh,
          "sigmoid": torch.sigmoid}[activation](yt)
    torch_backward(yt, dy)
    close(y, yt, "forward")
    close(dx, xt.grad, "dL/dx")
    close(dense.grads["kernel"], wt.grad, "dL/dkernel")
    if use_bias:
        close(dense.grads["bias"], bt.grad, "dL/dbias")


# --- a chain: the ResNet stem and head, end to end ------------------------------
def test_resnet_stem_and_head_chain_matches_torch(rng):
    """conv 7x7/2 'same' -> BN (training) -> ReLU -> max-pool 3x3/2 'same' ->
    global average -> Dense: gradients passed layer to layer by hand in minires,
    through one autograd graph in torch."""
    x = rng.standard_normal((2, 15, 14, 3))
    conv = Conv2D(6, 7, strides=2, padding="same", dtype="float64")
    bn = BatchNormalization(dtype="float64")
    relu, pool = ReLU(dtype="float64"), MaxPooling2D(3, strides=2, padding="same", dtype="float64")
    gap, dense = GlobalAveragePooling2D(dtype="float64"), Dense(5, dtype="float64")
    layers = [conv, bn, relu, pool, gap, dense]
    h = x
    for layer in layers:                                              # build
        h = layer(h, training=True)
    conv.params["kernel"] = rng.standard_normal(conv.params["kernel"].shape)
    conv.params["bias"] = rng.standard_normal(6)
    bn.params["gamma"] = rng.uniform(0.5, 1.5, 6)
    bn.params["beta"] = rng.standard_normal(6)
    dense.params["kernel"] = rng.standard_normal((6, 5))
    dense.params["bias"] = rng.standard_normal(5)
    h, caches = x, []
    for layer in layers:
        h, cache = layer.forward(h, training=True)
        caches.append(cache)
    dy = rng.standard_normal(h.shape)
    g = dy
    for layer, cache in zip(reversed(layers), reversed(caches)):
        g = layer.backward(g, cache)

    xt = leaf(x)
    wt, cbt = leaf(conv.params["kernel"]), leaf(conv.params["bias"])
    gt, bt = leaf(bn.params["gamma"]), leaf(bn.params["beta"])
    dwt, dbt = leaf(dense.params["kernel"]), leaf(dense.params["bias"])
    t = F.pad(to_nchw(xt), torch_pad_arg((15, 14), (7, 7), (2, 2), "same"))
    t = F.conv2d(t, wt.permute(3, 2, 0, 1), cbt, stride=2)
    t = F.relu(F.batch_norm(t, None, None, gt, bt, training=True, eps=1e-3))
    t = F.pad(t, torch_pad_arg(tuple(t.shape[2:]), (3, 3), (2, 2), "same"), value=-math.inf)
    t = F.max_pool2d(t, 3, 2).mean(dim=(2, 3))
    yt = F.linear(t, dwt.T, dbt)
    torch_backward(yt, dy)
    # the chain's errors compound a little, hence 1e-9
    np.testing.assert_allclose(h, yt.detach().numpy(), rtol=1e-9, atol=1e-11)
    for mine, theirs, what in [(g, xt.grad, "dL/dx"), (conv.grads["kernel"], wt.grad, "conv kernel"),
                               (conv.grads["bias"], cbt.grad, "conv bias"),
                               (bn.grads["gamma"], gt.grad, "gamma"), (bn.grads["beta"], bt.grad, "beta"),
                               (dense.grads["kernel"], dwt.grad, "dense kernel"),
                               (dense.grads["bias"], dbt.grad, "dense bias")]:
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-9, atol=1e-11, err_msg=what)
