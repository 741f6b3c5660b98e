"""The layers and helpers Keras tutorials use beyond ResNet's (issue 29):
LeakyReLU, Reshape, Rescaling, UpSampling2D, Average, Multiply, Maximum,
Minimum; Sequential.pop and a Sequential's feature extractor;
keras.utils.to_categorical. Each layer: a float64 gradient check and, with
Keras installed (dev-only oracle), Keras's outputs on the same inputs."""
import os

import numpy as np
import pytest
from conftest import assert_gradients_match, distinct_values

from minires import gradcheck, keras
from minires.layers import (Average, Conv2D, Dense, Input, LeakyReLU, Maximum, Minimum, Multiply,
                            Rescaling, Reshape, UpSampling2D)
from minires.models import Sequential

F64 = {"dtype": "float64"}

# (minires layer, Keras layer name and arguments, number of inputs, input shape)
LAYERS = {
    "LeakyReLU": (lambda: LeakyReLU(0.2, **F64), ("LeakyReLU", {"negative_slope": 0.2}), 1,
                  (2, 3, 4, 5)),
    "LeakyReLU(alpha)": (lambda: LeakyReLU(alpha=0.1, **F64), ("LeakyReLU", {"negative_slope": 0.1}), 1,
                         (2, 7)),
    "Reshape": (lambda: Reshape((4, -1), **F64), ("Reshape", {"target_shape": (4, -1)}), 1,
                (2, 3, 4, 2)),
    "Rescaling": (lambda: Rescaling(1 / 255, 0.5, **F64), ("Rescaling", {"scale": 1 / 255, "offset": 0.5}),
                  1, (2, 4, 4, 3)),
    "UpSampling2D": (lambda: UpSampling2D((2, 3), **F64), ("UpSampling2D", {"size": (2, 3)}), 1,
                     (2, 3, 4, 2)),
    "Average": (lambda: Average(**F64), ("Average", {}), 3, (2, 3, 4)),
    "Multiply": (lambda: Multiply(**F64), ("Multiply", {}), 3, (2, 3, 4)),
    "Maximum": (lambda: Maximum(**F64), ("Maximum", {}), 3, (2, 3, 4)),
    "Minimum": (lambda: Minimum(**F64), ("Minimum", {}), 2, (2, 3, 4)),
}


def inputs_for(rng, count, shape):
    """Values far apart (no ties for Maximum, no kink of LeakyReLU within a step), both signs."""
    return [distinct_values(rng, shape) + 0.003 * i for i in range(count)]


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_gradient_check(rng, name):
    make, _, count, shape = LAYERS[name]
    layer = make()
    report = gradcheck.check_layer(layer, *inputs_for(rng, count, shape))
    assert set(report) == {f"input {i}" for i in range(count)}
    assert_gradients_match(report, name)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_forward_equals_keras(rng, name):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras_module = pytest.importorskip("keras")
    make, (keras_name, options), count, shape = LAYERS[name]
    xs = inputs_for(rng, count, shape)
    theirs = getattr(keras_module.layers, keras_name)(**options)
    expected = np.asarray(theirs(xs if count > 1 else xs[0]))
    ours, _ = make().forward(xs if count > 1 else xs[0])
    assert ours.shape == expected.shape
    # Keras computes in float32
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("layer", [Maximum, Minimum])
def test_a_tie_sends_the_gradient_to_the_first_input(layer):
    a = np.array([[1.0, 2.0]])
    _, cache = layer(**F64).forward([a, a.copy()])
    first, second = layer(**F64).backward(np.ones_like(a), cache)
    np.testing.assert_array_equal(first, [[1.0, 1.0]])
    np.testing.assert_array_equal(second, [[0.0, 0.0]])


def test_multiply_with_a_zero_input_still_has_the_other_gradients():
    a, b, c = np.array([[0.0, 2.0]]), np.array([[3.0, 4.0]]), np.array([[5.0, 0.5]])
    _, cache = Multiply(**F64).forward([a, b, c])
    grads = Multiply(**F64).backward(np.ones_like(a), cache)
    np.testing.assert_array_equal(grads[0], b * c)
    np.testing.assert_array_equal(grads[1], a * c)          # zero where a is: not NaN


@pytest.mark.parametrize("make, message", [
    (lambda: Reshape((3, -1, -1)), r"target_shape must be a tuple of positive ints with at most one -1"),
    (lambda: Reshape("ab"), r"target_shape must be a tuple"),
    (lambda: UpSampling2D(interpolation="bilinear"), r"'nearest' interpolation only, got 'bilinear'"),
    (lambda: LeakyReLU(-1.0), r"negative_slope must be a number >= 0"),
])
def test_bad_arguments_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_reshape_refuses_a_size_that_does_not_divide():
    x_in = Input((3, 4))
    with pytest.raises(ValueError, match=r"layer 'r': cannot reshape inputs of shape "
                                         r"\(None, 3, 4\) to \(5, -1\)"):
        Reshape((5, -1), name="r")(x_in)
    assert Reshape((6, -1))(x_in).shape == (None, 6, 2)


# --- Sequential ------------------------------------------------------------------------
def conv_stack():
    model = Sequential(name="stack")
    model.add(Input((16, 16, 3)))
    for i, strides in enumerate((2, 1, 1)):
        model.add(Conv2D(4, 3, strides=strides, activation="relu", name=f"conv{i}"))
    return model


def test_the_sequential_guides_feature_extractor(rng):
    """keras.io's Sequential guide: a Model from seq.inputs to every layer's output."""
    model = conv_stack()
    extractor = keras.Model(inputs=model.inputs, outputs=[layer.output for layer in model.layers])
    x = rng.standard_normal((2, 16, 16, 3)).astype("float32")
    features = extractor(x)
    assert [f.shape for f in features] == [(2, 7, 7, 4), (2, 5, 5, 4), (2, 3, 3, 4)]
    np.testing.assert_allclose(features[-1], model.predict(x, verbose=0), rtol=1e-6)


def test_pop_removes_the_last_layer_and_traces_the_rest(rng):
    model = conv_stack()
    x = rng.standard_normal((2, 16, 16, 3)).astype("float32")
    popped = model.pop()
    assert popped.name == "conv2" and [layer.name for layer in model.layers] == ["conv0", "conv1"]
    assert model.output.shape == (None, 5, 5, 4) and model.predict(x, verbose=0).shape == (2, 5, 5, 4)
    model.add(Dense(2))
    assert model.predict(x, verbose=0).shape == (2, 5, 5, 2)
    for _ in range(3):
        model.pop()
    with pytest.raises(TypeError, match="Sequential 'stack' has no layers to pop"):
        model.pop()


# --- to_categorical ---------------------------------------------------------------------------
@pytest.mark.parametrize("labels, classes", [([1, 2, 0], None), ([[1], [3]], 5),
                                             (np.array([[1, 2], [0, 1]]), None), ([1.0, 2.0], 3),
                                             (np.zeros(0, int), 3), (np.array([4], np.uint8), 6)])
def test_to_categorical_is_keras(labels, classes):
    ours = keras.utils.to_categorical(labels, classes)
    expected_shape = np.shape(labels)[:-1] if np.ndim(labels) > 1 and np.shape(labels)[-1] == 1 \
        else np.shape(labels)
    width = classes if classes is not None else int(np.max(labels)) + 1
    assert ours.shape == (*expected_shape, width) and ours.dtype == np.float64
    np.testing.assert_array_equal(ours.argmax(-1), np.reshape(labels, expected_shape))
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras as real_keras
    except ImportError:
        return
    np.testing.assert_array_equal(ours, real_keras.utils.to_categorical(labels, classes))


@pytest.mark.parametrize("labels, message", [([-1, 2], r"lie in \[0, 3\), got values from -1 to 2"),
                                             ([3], r"labels must lie in \[0, 3\)"),
                                             ([1.5], "whole numbers .* with fractions"),
                                             (["a"], "whole numbers")])
def test_to_categorical_refuses_what_is_not_a_class_index(labels, message):
    with pytest.raises(ValueError, match=message):
        keras.utils.to_categorical(labels, 3)
