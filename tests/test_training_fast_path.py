"""The training step's shortcuts give the gradients the plain backward gives.

- ``model.backward(dy, input_grads=False)``: no gradient of the images; the
  layers that read only them (the stem's padding and 7x7 conv) skip that work,
  and every weight's gradient is the same, bit for bit.
- The bias gradient (kernels.column_sums): Numba against the readable NumPy sum.
"""
import numpy as np
import pytest
from conftest import assert_model_gradients_match, randomize_offsets

from minires import backend, gradcheck, kernels, train
from minires.applications.resnet import stem
from minires.backend import floatx_scope
from minires.blocks import bottleneck_block
from minires.kernels import channelwise
from minires.layers import (Add, BatchNormalization, Conv2D, Dense, Flatten,
                            GlobalAveragePooling2D, Input, ReLU, ZeroPadding2D)
from minires.layers import conv as conv_module
from minires.losses import SoftmaxCrossEntropy
from minires.models import Model, Sequential
from minires.optim import SGD


def tiny_resnet50(dtype="float64"):
    """ResNet-50's layout in miniature: the padded 7x7/2 stem, BN, ReLU, padded
    max-pool, a projection and an identity bottleneck block, the head."""
    with floatx_scope(dtype):
        inputs = Input(shape=(16, 16, 3))
        x = stem(inputs, Conv2D(4, 7, strides=2, name="conv1_conv"), "conv1_bn", 1.001e-5,
                 relu_name="conv1_relu", pool_name="pool1_pool")
        x = bottleneck_block(x, 3, (2, 2, 8), strides=1, projection=True, name="conv2_block1")
        x = bottleneck_block(x, 3, (2, 2, 8), strides=1, projection=False, name="conv2_block2")
        model = Model(inputs, Dense(5, name="predictions")(GlobalAveragePooling2D()(x)))
    randomize_offsets(model, np.random.default_rng(0))
    return model


def padded_stem_net():
    """A net small enough for a gradient check: a padded strided conv on the
    images, BN, ReLU, a second conv -> BN -> ReLU, the head (float64)."""
    with floatx_scope("float64"):
        inputs = Input(shape=(8, 8, 3))
        x = Conv2D(3, 3, strides=2)(ZeroPadding2D(1)(inputs))
        x = ReLU()(BatchNormalization()(x))
        x = ReLU()(BatchNormalization()(Conv2D(3, 3, padding="same")(x)))
        model = Model(inputs, Dense(3)(GlobalAveragePooling2D()(x)))
    randomize_offsets(model, np.random.default_rng(0))
    return model


def gradients(model, x, dy, **backward_options):
    """(what backward returns, {'layer/param': gradient}) after one training forward."""
    model.forward(x, training=True)
    d_inputs = model.backward(dy, **backward_options)
    return d_inputs, {f"{layer.name}/{name}": layer.grads[name].copy()
                      for layer, name in model.parameters()}


def assert_same_gradients(got, expected):
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def sample(rng, model, batch=2):
    x = rng.standard_normal((batch, *model.inputs[0].shape[1:]))
    return x, rng.standard_normal((batch, *model.outputs[0].shape[1:]))


def count_calls(monkeypatch, owner, name):
    """Wrap owner.name so that each call appends its first argument's shape to a list."""
    calls, original = [], getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(getattr(args[0], "shape", None))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


# --- input_grads=False -------------------------------------------------------------------
def test_skipping_input_grads_keeps_every_weight_gradient_bit_for_bit(rng):
    model = tiny_resnet50()
    x, dy = sample(rng, model)
    d_images, full = gradients(model, x, dy)
    assert d_images.shape == x.shape
    nothing, lean = gradients(model, x, dy, input_grads=False)
    assert nothing is None
    assert_same_gradients(lean, full)


def test_skipping_input_grads_skips_the_padding_and_the_stem_convs_input_gradient(rng, monkeypatch):
    model = tiny_resnet50()
    x, dy = sample(rng, model)
    pad = model.get_layer("conv1_pad")
    pad_calls = count_calls(monkeypatch, pad, "backward")
    col2im_calls = count_calls(monkeypatch, conv_module, "col2im")
    stem_columns = (2, 8, 8, 7, 7, 3)                     # d_cols of the 7x7/2 conv on 22x22x3
    gradients(model, x, dy)
    assert len(pad_calls) == 1 and stem_columns in col2im_calls
    every_other_conv = len(col2im_calls) - 1
    pad_calls.clear(), col2im_calls.clear()
    gradients(model, x, dy, input_grads=False)
    assert pad_calls == [] and stem_columns not in col2im_calls
    assert len(col2im_calls) == every_other_conv


def test_the_layers_skip_dx_when_told_and_their_weight_gradients_stay(rng):
    for layer, x in ((Conv2D(3, 3, strides=2, padding="same", dtype="float64"),
                      rng.standard_normal((2, 7, 7, 2))),
                     (Dense(4, activation="relu", dtype="float64"), rng.standard_normal((3, 5)))):
        y, cache = layer.forward(x, training=True)
        dy = rng.standard_normal(y.shape)
        assert layer.backward(dy, cache).shape == x.shape
        full = {name: g.copy() for name, g in layer.grads.items()}
        layer.zero_grads()
        assert layer.backward(dy, cache, input_grad=False) is None
        assert_same_gradients(layer.grads, full)


def test_a_nested_model_reading_the_input_skips_its_input_gradient_too(rng, monkeypatch):
    with floatx_scope("float64"):
        inner = Sequential([Input(shape=(6, 6, 2)), ZeroPadding2D(1), Conv2D(3, 3, strides=2),
                            BatchNormalization(), ReLU()], name="inner")
        outer_in = Input(shape=(6, 6, 2))
        model = Model(outer_in, Dense(4)(Flatten()(inner(outer_in))))
    x, dy = sample(rng, model)
    d_images, full = gradients(model, x, dy)
    assert d_images.shape == x.shape
    pad_calls = count_calls(monkeypatch, inner.layers[0], "backward")
    nothing, lean = gradients(model, x, dy, input_grads=False)
    assert nothing is None and pad_calls == []
    assert_same_gradients(lean, full)


def test_every_input_of_a_model_with_two_gets_none(rng):
    with floatx_scope("float64"):
        a, b = Input(shape=(4, 4, 2)), Input(shape=(4, 4, 3))
        # a is read by two convs (neither sends back a gradient); b reaches Add weightless
        summed = Add()([Conv2D(3, 1)(a), Conv2D(3, 1)(a), ZeroPadding2D(0)(b)])
        model = Model([a, b], Dense(2)(Flatten()(summed)))
    xa, xb = rng.standard_normal((2, 4, 4, 2)), rng.standard_normal((2, 4, 4, 3))
    dy = rng.standard_normal((2, 2))
    full_inputs, full = gradients(model, [xa, xb], dy)
    assert [d.shape for d in full_inputs] == [xa.shape, xb.shape]
    lean_inputs, lean = gradients(model, [xa, xb], dy, input_grads=False)
    assert lean_inputs == [None, None]
    assert_same_gradients(lean, full)


def test_the_training_step_asks_for_no_input_gradient(rng, monkeypatch):
    model = tiny_resnet50()
    pad_calls = count_calls(monkeypatch, model.get_layer("conv1_pad"), "backward")
    x, labels = rng.standard_normal((2, 16, 16, 3)), np.array([1, 3])
    train.train_step(model, x, labels, SGD(0.1), SoftmaxCrossEntropy(), {}, 0.1)
    assert pad_calls == []
    assert all(name in layer.grads for layer, name in model.parameters())


def test_weight_gradients_without_input_gradients_pass_a_gradient_check(rng):
    model = padded_stem_net()
    x, _ = sample(rng, model)

    def forward():
        return model.forward(x, training=True, keep_cache=True)

    def backward(d_output):
        return model.backward(d_output, input_grads=False)

    params = {f"{layer.name}/{name}": (layer.params[name], lambda l=layer, n=name: l.grads[n])
              for layer, name in model.parameters()}
    report = gradcheck.check_gradients(forward, backward, [], params, h=1e-6, max_entries=8)
    assert_model_gradients_match(report, model, "weights without input gradients")


# --- the kernels: Numba against the readable NumPy versions ------------------------------
def compiled():
    return pytest.importorskip("minires.kernels.numba_kernels", reason="Numba is not installed")


@pytest.mark.parametrize("shape", [(0, 3), (7, 5), (1030, 64), (3, 2048)])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-13), (np.float32, 1e-5)])
def test_column_sums_compiled_and_readable_agree(rng, shape, dtype, tol):
    rows = (rng.standard_normal(shape) + 1.0).astype(dtype)
    exact = rows.astype(np.float64).sum(axis=0)
    versions = [channelwise.column_sums, kernels.column_sums]
    if backend.numba_available():
        versions.append(compiled().column_sums)
    for version in versions:
        got = version(rows)
        assert got.shape == (shape[1],) and got.dtype == dtype
        scale = np.maximum(np.abs(rows).sum(axis=0, dtype=np.float64), 1.0)   # per column
        error = np.abs(got - exact) / scale
        assert error.max(initial=0.0) <= tol, (version, error.max())
