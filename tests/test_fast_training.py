"""The gradient plan's fast ops (minires/planner.py) against the layers as
written: Winograd convs (fast_ops.WinogradConv) and BN+ReLU pairs
(layers/normalization.py's BatchNormReLU) give the same outputs and gradients,
either backward follows either forward, float64 gradient checks through them,
and the calls the planner leaves alone."""
import numpy as np
import pytest
from conftest import assert_model_gradients_match

from minires import backend, gradcheck, kernels, planner
from minires.fast_ops import FORWARD_TILE_SIZE, WinogradConv
from minires.layers import (Activation, Add, BatchNormalization, Conv2D, Dense, GlobalAveragePooling2D,
                            Input, ReLU)
from minires.layers.normalization import BatchNormReLU
from minires.models import Model


@pytest.fixture
def winograd_calls(monkeypatch):
    """(kind, input shape) of every Winograd product run: 'conv' (a forward's z or a
    backward's dx), 'dW' (a kernel gradient)."""
    calls = []
    for kind, name in (("conv", "winograd_conv3x3"), ("dW", "winograd_kernel_gradient")):
        def spy(x, *rest, kind=kind, run=getattr(kernels, name)):
            calls.append((kind, x.shape))
            return run(x, *rest)
        monkeypatch.setattr(kernels, name, spy)
    return calls


def conv_model(size, channels, filters, dtype, **conv_options):
    with backend.floatx_scope(np.dtype(dtype).name):
        x_in = Input((size, size, channels))
        conv = Conv2D(filters, 3, bias_initializer="glorot_uniform", **conv_options)
        return Model(x_in, Activation("relu")(conv(x_in))), conv


def step(model, conv, x, dy, fast):
    """Outputs, input gradient and the conv's gradients of one forward and backward."""
    model.fast_training = fast
    y = model.forward(x, training=True)
    model.zero_grads()
    dx = model.backward(dy)
    return [y, dx] + [conv.grads[name].copy() for name in conv.trainable_names()]


# 12x12 outputs (9 F(4x4) tiles an image), 20x20 with 128 -> 256 (F(2x2)), 'valid' 10x10
@pytest.mark.parametrize("size, channels, filters, padding, use_bias", [
    (12, 16, 24, "same", True), (20, 128, 256, "same", False), (12, 32, 16, "valid", True)])
@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_winograd_gives_the_layers_outputs_and_gradients(rng, winograd_calls, size, channels, filters,
                                                         padding, use_bias, dtype, tolerance):
    model, conv = conv_model(size, channels, filters, dtype, padding=padding, use_bias=use_bias)
    x = rng.standard_normal((4, size, size, channels)).astype(dtype)
    dy = rng.standard_normal(model.compute_output_shape(x.shape)).astype(dtype)
    plain = step(model, conv, x, dy, fast=False)
    assert winograd_calls == []
    fast = step(model, conv, x, dy, fast=True)
    assert winograd_calls == [("conv", x.shape), ("dW", x.shape), ("conv", dy.shape)]   # z; dW, dx
    names = ["y", "dx"] + conv.trainable_names()
    for name, expected, got in zip(names, plain, fast):
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        error = np.abs(got - expected).max() / np.abs(expected).max()
        assert error <= tolerance, f"{name}: relative error {error:.2e}"


def test_the_forward_takes_f2x2_and_the_gradients_f4x4(rng, monkeypatch):
    """12x12 outputs with 16 channels get F(4x4) by the rule; the forward keeps to
    F(2x2) (fast_ops.FORWARD_TILE_SIZE), dx and dW take F(4x4)."""
    tiles = []
    for name, tile_of in (("winograd_conv3x3", lambda args: args[1].shape[0]),    # U: (m+2)^2 rows
                          ("winograd_kernel_gradient", lambda args: (args[3] + 2) ** 2)):
        def spy(*args, run=getattr(kernels, name), tile_of=tile_of):
            tiles.append(tile_of(args))
            return run(*args)
        monkeypatch.setattr(kernels, name, spy)
    model, conv = conv_model(12, 16, 16, np.float32, padding="same")
    x = rng.standard_normal((4, 12, 12, 16)).astype(np.float32)
    model.backward(np.ones_like(model.forward(x, training=True)))
    assert FORWARD_TILE_SIZE == 2 and tiles == [16, 36, 36]          # forward z; dW, dx


def test_either_backward_follows_either_forward(rng):
    _, conv = conv_model(12, 16, 16, np.float64, padding="same")
    x = rng.standard_normal((4, 12, 12, 16))
    dz = rng.standard_normal((4, 12, 12, 16))
    op = WinogradConv(conv)
    forwards = {"layer": conv.forward(x, training=True), "op": op.forward([x], True, True)}
    np.testing.assert_allclose(forwards["op"][0], forwards["layer"][0], rtol=0, atol=1e-12)
    results = []
    for _, cache in forwards.values():
        for backward in (lambda c: conv.backward(dz, c), lambda c: op.backward(dz, c)[0]):
            conv.zero_grads()
            results.append((backward(cache), conv.grads["kernel"].copy(), conv.grads["bias"].copy()))
    for result in results[1:]:
        for expected, got in zip(results[0], result):
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-11 * np.abs(expected).max())


def test_no_input_gradient_skips_the_winograd_dx(rng, winograd_calls):
    _, conv = conv_model(12, 16, 16, np.float64, padding="same")
    x = rng.standard_normal((4, 12, 12, 16))
    op = WinogradConv(conv)
    _, cache = op.forward([x], True, True)
    assert op.backward(np.ones((4, 12, 12, 16)), cache, input_grad=False) == [None]
    assert winograd_calls == [("conv", x.shape), ("dW", x.shape)]


def test_a_gradient_check_through_winograd(rng, winograd_calls):
    model, _ = conv_model(8, 16, 16, np.float64, padding="same")
    x = rng.standard_normal((8, 8, 8, 16))              # 4 F(4x4) tiles an image, 32 in all
    report = gradcheck.check_model(model, x, max_entries=12)
    assert winograd_calls, "Winograd did not run"
    worst = max(report.values())
    assert worst < 1e-6, f"largest relative error {worst:.2e}: {report}"


class Shifted(Conv2D):
    """A subclass computing something else: Winograd must not stand in for it."""
    def forward(self, x, training=False):
        y, cache = super().forward(x, training)
        return y + 1, cache


@pytest.mark.parametrize("make, reason", [
    (lambda: Conv2D(16, 3, padding="same"), None),
    (lambda: Conv2D(16, 3, strides=2, padding="same"), "stride 2"),
    (lambda: Conv2D(16, 5, padding="same"), "5x5"),
    (lambda: Conv2D(16, 3, padding="same", activation="relu"), "an activation"),
    (lambda: Shifted(16, 3, padding="same"), "a subclass")])
def test_the_convs_the_planner_gives_winograd(rng, make, reason):
    layer = make()
    x = rng.standard_normal((2, 8, 8, 16)).astype(np.float32)
    assert not planner.winograd_trains(layer), "not built yet"
    layer.forward(x)
    assert planner.winograd_trains(layer) is (reason is None), reason
    if reason is None:
        assert WinogradConv(layer).takes(x)
        assert not WinogradConv(layer).takes(x.astype(np.float64)), "another dtype: the layer casts it"


def test_few_channels_or_tiles_run_the_layer_as_written(rng, winograd_calls):
    """8 channels in (or, for dx, out), or a batch of 4 tiles: im2col, both ways."""
    for channels, filters, batch in ((8, 16, 8), (16, 8, 8), (16, 16, 1)):
        model, conv = conv_model(8, channels, filters, np.float32, padding="same")
        x = rng.standard_normal((batch, 8, 8, channels)).astype(np.float32)
        model.forward(x, training=True)
        model.backward(np.ones((batch, 8, 8, filters), np.float32))
    assert winograd_calls == [("conv", (8, 8, 8, 16))]     # the forward of 16 channels to 8


# --- BatchNormalization + ReLU as one op -----------------------------------------------------
def fused_pairs(model):
    """[BN layer name, ReLU layer name] of each BatchNormReLU step of the gradient plan."""
    return [[step.op.layer.bn.name, step.output.layer.name] for step in model.plan("gradient").steps
            if isinstance(getattr(step.op, "layer", None), BatchNormReLU)]


@pytest.mark.parametrize("training", [True, False])
def test_a_gradient_check_of_the_batch_norm_relu_op(rng, training):
    """The op alone, in float64: dx, dgamma and dbeta against finite differences,
    with batch statistics and with moving ones; its output is relu(bn(x))."""
    with backend.floatx_scope("float64"):
        bn = BatchNormalization()
    x = rng.standard_normal((4, 5, 5, 6))
    bn.forward(x)                                          # builds it
    gamma, beta, mean, variance = rng.standard_normal((4, 6))
    bn.set_weights([gamma, beta, mean, variance ** 2 + 0.5])
    op, call = BatchNormReLU(bn), {}
    y, _ = op.forward(x, training)
    assert 0.2 < (y == 0).mean() < 0.8                      # the ReLU really cuts
    np.testing.assert_allclose(y, np.maximum(bn.forward(x, training)[0], 0), rtol=0, atol=1e-14)

    def forward(x):
        y, call["cache"] = op.forward(x, training)
        return y

    def backward(dy):
        bn.zero_grads()
        return op.backward(dy, call["cache"])
    params = {name: (bn.params[name], lambda name=name: bn.grads[name]) for name in ("gamma", "beta")}
    report = gradcheck.check_gradients(forward, backward, [x], params)
    assert report.worst() < 1e-7, report


def bn_relu_net(relu_layer, bn_trainable=True, relu_dtype="float64"):
    """conv - BN - ReLU - conv - BN, + the input, ReLU - pool - logits (float64)."""
    with backend.floatx_scope("float64"):
        x_in = Input((6, 6, 4))
        y = Conv2D(4, 3, padding="same")(x_in)
        bn = BatchNormalization(trainable=bn_trainable, name="bn_a")
        with backend.floatx_scope(relu_dtype):
            relu = relu_layer()
        y = relu(bn(y))
        y = BatchNormalization(name="bn_b")(Conv2D(4, 3, padding="same")(y))
        y = ReLU()(Add()([y, x_in]))
        model = Model(x_in, Dense(3)(GlobalAveragePooling2D()(y)))
    gamma, beta, mean, variance = np.random.default_rng(7).standard_normal((4, 4))
    bn.set_weights([gamma, beta, mean, variance ** 2 + 0.5])     # a ReLU that cuts unevenly
    return model


@pytest.mark.parametrize("relu_layer", [ReLU, lambda: Activation("relu")])
@pytest.mark.parametrize("bn_trainable", [True, False])
def test_a_bn_relu_pair_gives_the_layers_outputs_gradients_and_statistics(rng, relu_layer, bn_trainable):
    model = bn_relu_net(relu_layer, bn_trainable)
    relu = model.readers(model.get_layer("bn_a").output)[0].layer
    assert fused_pairs(model) == [["bn_a", relu.name]]          # not bn_b: an Add reads it
    x = rng.standard_normal((5, 6, 6, 4))
    weights = model.get_weights()
    results = []
    for fast in (False, True):
        model.set_weights(weights)
        model.fast_training = fast
        y = model.forward(x, training=True)
        model.zero_grads()
        dx = model.backward(np.cos(np.arange(y.size)).reshape(y.shape))
        results.append([y, dx] + [layer.grads[name].copy() for layer, name in model.parameters()]
                       + [w.copy() for w in model.get_weights()])      # the moving statistics too
    for expected, got in zip(*results):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_a_gradient_check_through_a_bn_relu_pair(rng):
    model = bn_relu_net(ReLU)
    assert fused_pairs(model)
    report = gradcheck.check_model(model, rng.standard_normal((4, 6, 6, 4)), max_entries=10)
    assert_model_gradients_match(report, model, "BatchNormalization + ReLU pair")


def test_a_relu_of_another_float_type_is_not_paired():
    """It casts its input (float32 here): the pair would skip that rounding."""
    assert fused_pairs(bn_relu_net(ReLU, relu_dtype="float32")) == []


def test_pairs_only_where_the_bn_output_is_the_relus_alone():
    with backend.floatx_scope("float64"):
        x_in = Input((4, 4, 2))
        shared = BatchNormalization(name="read_twice")(x_in)
        out = BatchNormalization(name="an_output")(x_in)
        y = Add()([ReLU()(shared), shared])
        model = Model(x_in, [ReLU()(out), out, y])
    assert fused_pairs(model) == []
