"""Hostile inputs to building and running models (issue 28): a Sequential that
refuses a layer stays as it was; float16 batch norm takes its statistics in
float32 as Keras does; empty batches and images without pixels; Python
arithmetic on symbolic tensors in a subclassed call(); Input shapes."""
import numpy as np
import pytest

from minires.layers import (Activation, BatchNormalization, Conv2D, Dense, Flatten, GlobalAveragePooling2D,
                            GlobalMaxPooling2D, Input, MaxPooling2D, AveragePooling2D)
from minires.models import Model, Sequential


def snapshot(model):
    return [w.copy() for w in model.weights]


def assert_unchanged(model, before):
    after = model.weights
    assert len(after) == len(before) and all(np.array_equal(a, b) for a, b in zip(before, after))


# --- Sequential.add -----------------------------------------------------------------------
def built_for_seven_features(name):
    layer = Dense(2, name=name)
    layer.forward(np.ones((1, 7), "float32"))
    return layer


@pytest.mark.parametrize("misfit, message", [
    (lambda: Conv2D(2, 3, name="misfit"), r"layer 'misfit' \(Conv2D\) expects a 4-D input"),
    (lambda: GlobalAveragePooling2D(name="misfit"), r"layer 'misfit' \(GlobalAveragePooling2D\) expects a 4-D"),
    (lambda: built_for_seven_features("misfit"),
     r"layer 'misfit' was built for 7 input features, got an input of shape \(None, 3\)"),
    (lambda: Dense(2, name="first"), r"layer names must be unique, repeated: \['first'\]"),
])
def test_a_layer_sequential_add_refuses_is_not_kept(rng, misfit, message):
    model = Sequential([Input((4,)), Dense(3, name="first")], name="stack")
    x = rng.standard_normal((2, 4)).astype("float32")
    expected, weights = model.predict(x, verbose=0), snapshot(model)
    layer = misfit()
    with pytest.raises(ValueError, match=message):
        model.add(layer)
    assert [layer.name for layer in model.layers] == ["first"]
    np.testing.assert_array_equal(model.predict(x, verbose=0), expected)
    assert_unchanged(model, weights)
    model.add(Dense(2, name="second"))                     # and it still grows
    assert model.predict(x, verbose=0).shape == (2, 2)


# --- float16 batch norm -------------------------------------------------------------------
def test_float16_batch_norm_takes_its_statistics_in_float32(rng):
    """0-255 images at 32x48x48: float16 sums overflow (65504; the count alone is
    73,728), so the statistics are taken in float32 and the outputs match a
    float32 layer's to float16's precision."""
    x = rng.uniform(0, 255, (32, 48, 48, 3))
    half, single = BatchNormalization(dtype="float16"), BatchNormalization(dtype="float32")
    y16, _ = half.forward(x.astype("float16"), training=True)
    y32, _ = single.forward(x.astype("float32"), training=True)
    assert y16.dtype == np.float16
    assert np.abs(y16.astype("float32") - y32).max() < 1e-2 * np.abs(y32).max()
    for name in ("moving_mean", "moving_variance"):
        moving = half.params[name]
        assert moving.dtype == np.float16 and np.isfinite(moving).all(), name
        np.testing.assert_allclose(moving.astype("float32"), single.params[name], rtol=2e-3)


# --- empty batches and images without pixels ------------------------------------------------
def test_batch_norm_on_an_empty_batch_keeps_its_statistics(each_kernel_path):
    bn = BatchNormalization()
    bn.forward(np.ones((2, 4, 4, 3), "float32"), training=True)
    before = [w.copy() for w in bn.get_weights()]
    y, cache = bn.forward(np.ones((0, 4, 4, 3), "float32"), training=True)
    assert y.shape == (0, 4, 4, 3)
    assert bn.backward(np.ones_like(y), cache).shape == (0, 4, 4, 3)
    assert all(np.array_equal(a, b) for a, b in zip(before, bn.get_weights()))


@pytest.mark.parametrize("layer", [GlobalAveragePooling2D, GlobalMaxPooling2D, Flatten,
                                   lambda: MaxPooling2D(2), lambda: AveragePooling2D(2),
                                   lambda: Conv2D(2, 3, padding="same")])
def test_every_layer_takes_a_batch_of_none(each_kernel_path, layer):
    layer = layer()
    y, cache = layer.forward(np.ones((0, 4, 4, 3), "float32"), training=True)
    assert y.shape[0] == 0 and y.size == 0
    assert layer.backward(np.ones_like(y), cache).shape == (0, 4, 4, 3)


@pytest.mark.parametrize("layer", [GlobalAveragePooling2D, GlobalMaxPooling2D])
@pytest.mark.parametrize("shape", [(2, 0, 0, 3), (2, 0, 4, 3)])
def test_global_pooling_refuses_images_without_pixels(layer, shape):
    with pytest.raises(ValueError, match=rf"layer 'pool' pools over each image's pixels, but the "
                                         rf"input of shape \({shape[0]}, {shape[1]}, {shape[2]}, 3\) has none"):
        layer(name="pool").forward(np.ones(shape, "float32"))


def test_a_model_trains_and_predicts_on_an_empty_batch(rng):
    x_in = Input((6, 6, 3))
    y = GlobalMaxPooling2D()(BatchNormalization()(Conv2D(4, 3)(x_in)))
    model = Model(x_in, Dense(2)(y))
    weights = snapshot(model)
    empty = np.zeros((0, 6, 6, 3), "float32")
    assert model.predict(empty, verbose=0).shape == (0, 2)
    out = model.forward(empty, training=True)
    model.backward(np.ones_like(out))
    assert out.shape == (0, 2)
    assert_unchanged(model, weights)


# --- Python on symbolic tensors in call() -------------------------------------------------------
@pytest.mark.parametrize("compute", [lambda x: x * 2.0, lambda x: 2.0 * x, lambda x: x - x,
                                     lambda x: x / 2, lambda x: -x, lambda x: x ** 2,
                                     lambda x: np.mean(x), lambda x: np.exp(x), lambda x: x[:, :2],
                                     lambda x: x if x > 0 else x, lambda x: float(x)],
                         ids=["x * 2.0", "2.0 * x", "x - x", "x / 2", "-x", "x ** 2", "np.mean(x)",
                              "np.exp(x)", "x[:, :2]", "if x > 0", "float(x)"])
def test_python_on_symbolic_tensors_says_to_write_a_layer(compute):
    class Computing(Model):
        def __init__(self):
            super().__init__(name="computing")
            self.dense = Dense(2)

        def call(self, inputs, training=None):
            return self.dense(compute(inputs))

    with pytest.raises(TypeError, match=r"has no values yet: .* records only layer calls .* write "
                                        r"a layer instead"):
        Computing()(np.ones((2, 3), "float32"))


# --- Input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, batch_size", [((-1, 4), None), ("abc", None), ((0, 4), None),
                                               ((3.0,), None), (None, None), ((4,), 0),
                                               ((4,), -2), ((True, 2), None)])
def test_input_refuses_shapes_that_are_not_sizes(shape, batch_size):
    with pytest.raises(ValueError, match=r"Input 'x': shape must be a tuple of positive ints or None "
                                         r".*got shape="):
        Input(shape, batch_size=batch_size, name="x")


@pytest.mark.parametrize("shape, expected", [(4, (None, 4)), ((None, None, 3), (None, None, None, 3)),
                                             ([2, np.int64(3)], (None, 2, 3))])
def test_input_takes_what_keras_takes(shape, expected):
    assert Input(shape).shape == expected


@pytest.mark.parametrize("spelling", ["Softmax", "SOFTMAX"])
def test_a_softmax_spelt_in_capitals_is_seen_as_one(spelling):
    """Activation names are read lower-cased, as the layers apply them: a loss on
    logits must not take such a model's probabilities for logits."""
    x_in = Input((3,))
    dense = Model(x_in, Dense(2, activation=spelling)(x_in))
    layer = Model(x_in, Activation(spelling)(Dense(2)(x_in)))
    assert dense.output_applies_softmax() and layer.output_applies_softmax()
