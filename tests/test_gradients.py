"""Finite-difference gradient checks, float64, for every layer's input(s) and params
(on ``--device``: the same checks run on CuPy arrays with ``pytest --device cuda``)."""
import numpy as np
import pytest
from conftest import assert_gradients_match, distinct_values

from minires import gradcheck
from minires.backend import floatx_scope, to_device
from minires.layers import (Activation, Add, AveragePooling2D, BatchNormalization, Concatenate,
                            Conv2D, Dense, Flatten, GlobalAveragePooling2D, GlobalMaxPooling2D,
                            MaxPooling2D, ReLU, Softmax, ZeroPadding2D)
from minires.losses import SoftmaxCrossEntropy

F64 = {"dtype": "float64"}


def check(layer, *inputs, device, training=True):
    """Gradient check of ``layer`` on ``inputs`` (NumPy arrays), moved to ``device``."""
    report = gradcheck.check_layer(layer, *(to_device(x, device) for x in inputs), training=training)
    assert set(report) == {f"input {i}" for i in range(len(inputs))} | set(layer.trainable_names())
    assert_gradients_match(report, type(layer).__name__)


@pytest.mark.parametrize("size", [7, 8])           # odd and even: 'same' pads differently
@pytest.mark.parametrize("kernel,strides,padding", [
    (3, 2, "same"), (3, 1, "same"), (3, 1, "valid"), (1, 2, "valid"), (1, 1, "same"),
    (2, 2, "same"), (4, 1, "same"), (5, 2, "valid"), ((3, 1), (2, 1), "same"),
])
def test_conv2d(rng, device, size, kernel, strides, padding):
    conv = Conv2D(4, kernel, strides=strides, padding=padding, **F64)
    check(conv, rng.standard_normal((2, size, size + 1, 3)), device=device)


def test_conv2d_stem_7x7_stride2(rng, device):
    check(Conv2D(5, 7, strides=2, **F64), rng.standard_normal((1, 12, 11, 2)), device=device)


def test_conv2d_without_bias_with_activation(rng, device):
    conv = Conv2D(3, 3, padding="same", use_bias=False, activation="tanh", **F64)
    check(conv, rng.standard_normal((2, 5, 5, 2)), device=device)
    assert set(conv.params) == {"kernel"}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("axis,shape", [(-1, (3, 4, 5, 3)), (3, (2, 3, 3, 4)), (1, (4, 3, 2)),
                                        (-1, (6, 5))])
def test_batch_normalization(rng, device, training, axis, shape):
    bn = BatchNormalization(axis=axis, epsilon=1.001e-5, **F64)
    x = rng.standard_normal(shape) * 3 + 1
    bn(to_device(x, device))                        # build, then make the statistics non-trivial
    channels = bn.params["gamma"].shape
    for name, value in [("gamma", rng.uniform(0.5, 2, channels)), ("beta", rng.standard_normal(channels)),
                        ("moving_mean", rng.standard_normal(channels)),
                        ("moving_variance", rng.uniform(0.5, 2, channels))]:
        bn.params[name][...] = to_device(value, device)
    check(bn, x, device=device, training=training)


@pytest.mark.parametrize("pool,strides,padding,size", [
    (3, 2, "valid", 9), (3, 2, "valid", 8), (3, 2, "same", 8), (3, 2, "same", 7),
    (2, None, "valid", 6), (2, None, "same", 5), (3, 1, "same", 5), ((2, 3), (1, 2), "valid", 6),
])
def test_max_pooling(rng, device, pool, strides, padding, size):
    x = distinct_values(rng, (2, size, size, 3))
    check(MaxPooling2D(pool, strides, padding, **F64), x, device=device)


@pytest.mark.parametrize("pool,strides,padding,size", [
    (2, None, "valid", 6), (3, 2, "same", 8), (3, 2, "same", 7), (3, 1, "same", 5), (7, None, "valid", 7),
])
def test_average_pooling(rng, device, pool, strides, padding, size):
    check(AveragePooling2D(pool, strides, padding, **F64), rng.standard_normal((2, size, size, 3)),
          device=device)


def test_global_average_pooling(rng, device):
    check(GlobalAveragePooling2D(**F64), rng.standard_normal((2, 4, 3, 5)), device=device)


def test_global_max_pooling(rng, device):
    check(GlobalMaxPooling2D(**F64), distinct_values(rng, (2, 4, 3, 5)), device=device)


@pytest.mark.parametrize("padding", [1, (2, 1), ((1, 2), (0, 3))])
def test_zero_padding(rng, device, padding):
    check(ZeroPadding2D(padding, **F64), rng.standard_normal((2, 3, 4, 2)), device=device)


@pytest.mark.parametrize("activation", [None, "relu", "softmax", "sigmoid"])
@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 6)])
def test_dense(rng, device, activation, shape):
    check(Dense(5, activation=activation, **F64), rng.standard_normal(shape), device=device)


def test_flatten(rng, device):
    check(Flatten(**F64), rng.standard_normal((2, 3, 4, 5)), device=device)


@pytest.mark.parametrize("name", ["relu", "linear", "sigmoid", "tanh", "softmax"])
def test_activation(rng, device, name):
    check(Activation(name, **F64), distinct_values(rng, (2, 3, 4)), device=device)   # not at relu's kink


def test_relu(rng, device):
    check(ReLU(**F64), distinct_values(rng, (2, 3, 3, 4)), device=device)


@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax(rng, device, axis):
    check(Softmax(axis=axis, **F64), rng.standard_normal((3, 4, 5)) * 3, device=device)


@pytest.mark.parametrize("count", [2, 3])
def test_add(rng, device, count):
    check(Add(**F64), *[rng.standard_normal((2, 3, 3, 4)) for _ in range(count)], device=device)


def test_concatenate(rng, device):
    check(Concatenate(**F64), rng.standard_normal((2, 3, 3, 4)), rng.standard_normal((2, 3, 3, 1)),
          rng.standard_normal((2, 3, 3, 2)), device=device)


def _shared_source_block(sum_branches=True):
    """s = dense(x); y = add([tanh(s), s]).  s feeds two branches, so
    dL/ds = (gradient through tanh) + (gradient through the shortcut)."""
    dense, tanh, add = Dense(3, **F64), Activation("tanh", **F64), Add(**F64)
    caches = {}

    def forward(x):
        s, caches["dense"] = dense.forward(x)
        t, caches["tanh"] = tanh.forward(s)
        y, caches["add"] = add.forward([t, s])
        return y

    def backward(dy):
        dense.zero_grads()
        through_tanh, through_shortcut = add.backward(dy, caches["add"])
        ds = tanh.backward(through_tanh, caches["tanh"])
        if sum_branches:
            ds = ds + through_shortcut
        return dense.backward(ds, caches["dense"])

    return dense, forward, backward


@pytest.mark.parametrize("sum_branches", [True, False])
def test_add_with_shared_source_sums_branch_gradients(rng, device, sum_branches):
    dense, forward, backward = _shared_source_block(sum_branches)
    x = to_device(rng.standard_normal((4, 5)), device)
    forward(x)
    params = {k: (dense.params[k], lambda k=k: dense.grads[k]) for k in dense.params}
    report = gradcheck.check_gradients(forward, backward, [x], params)
    if sum_branches:
        assert_gradients_match(report, "Add (shared source)")
    else:                       # forgetting the shortcut's gradient is caught
        assert report.worst() > 1e-2


@pytest.mark.parametrize("one_hot", [False, True])
def test_softmax_cross_entropy(rng, device, one_hot):
    loss = SoftmaxCrossEntropy()
    logits = to_device(rng.standard_normal((5, 4)) * 5, device)
    labels = rng.integers(0, 4, 5)
    if one_hot:
        labels = np.eye(4)[labels]
    labels = to_device(labels, device)
    report = gradcheck.check_gradients(lambda z: loss.forward(z, labels), loss.backward, [logits])
    assert_gradients_match(report, "SoftmaxCrossEntropy")


def test_gradcheck_catches_a_wrong_backward(rng, device):
    """The checker itself can fail: a Dense whose backward forgets W.T is caught."""
    dense = Dense(3, **F64)
    x = to_device(rng.standard_normal((4, 3)), device)
    _, cache = dense.forward(x)

    def wrong_backward(dy):
        dense.zero_grads()
        dense.backward(dy, cache)
        return dy @ dense.params["kernel"]             # should be @ kernel.T
    params = {k: (dense.params[k], lambda k=k: dense.grads[k]) for k in dense.params}
    report = gradcheck.check_gradients(dense, wrong_backward, [x], params)
    assert report["input 0"] > 1e-2 and report["kernel"] < 1e-7


def test_check_layer_refuses_float32(rng):
    with pytest.raises(TypeError, match="float64"):
        gradcheck.check_layer(Dense(3), rng.standard_normal((2, 3)))


def test_check_model_restores_the_statistics_of_nested_models_too(rng):
    """A check runs many training forwards, each moving BN's statistics; a BN
    inside a nested model is put back too, and predict afterwards sees it."""
    from minires.layers import Input
    from minires.models import Model
    with floatx_scope("float64"):
        x_in = Input((4, 4, 3))
        inner = Model(x_in, BatchNormalization(name="inner_bn")(x_in), name="inner")
        outer_in = Input((4, 4, 3))
        outer = Model(outer_in, Dense(2)(Flatten()(inner(outer_in))))
    x = rng.standard_normal((3, 4, 4, 3))
    before_predict = outer.predict(x, verbose=0)               # an inference plan folded now
    statistics = [w.copy() for w in inner.get_layer("inner_bn").get_weights()]
    gradcheck.check_model(outer, x, max_entries=3)
    assert all(np.array_equal(a, b) for a, b in zip(statistics, inner.get_layer("inner_bn").get_weights()))
    np.testing.assert_array_equal(outer.predict(x, verbose=0), before_predict)
