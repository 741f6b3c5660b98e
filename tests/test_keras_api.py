"""Keras's model API on minires: Sequential, subclassed models, the `keras`
namespace, and the classic subclassed ResNet tutorial with only its imports
changed (subclassed_tutorial.py); Keras itself as the oracle where installed."""
import os

import numpy as np
import pytest
from conftest import assert_model_gradients_match, plain_predict, randomize_offsets, with_imports

import subclassed_tutorial as tut
from minires import gradcheck, keras, set_random_seed
from minires.backend import floatx_scope
from minires.keras import layers


def images(n=12, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, size, size, 3)).astype("float32"), rng.integers(0, 10, n)


def small_resnet():
    set_random_seed(0)
    return tut.ResNet(num_classes=10, widths=(8, 16))


def test_the_subclassed_tutorial_compiles_fits_evaluates_and_predicts():
    x, y = images()
    model = small_resnet()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert sorted(history.history) == ["accuracy", "loss"] and len(history.history["loss"]) == 2
    loss, accuracy = model.evaluate(x, y, verbose=0)
    assert np.isfinite(loss) and 0 <= accuracy <= 1
    probs = model.predict(x, verbose=0)
    assert probs.shape == (12, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert [type(layer).__name__ for layer in model.layers] == [      # in attribute order
        "Conv2D", "BatchNormalization", "Activation", "MaxPooling2D", "Sequential",
        "GlobalAveragePooling2D", "Dense"]


def test_subclassed_model_as_everywhere_else(tmp_path):
    """summary, weights in attribute order, checkpoints, the fast inference path."""
    x, _ = images(4)
    model = small_resnet()
    expected = model.predict(x, verbose=0)
    lines = []
    model.summary(print_fn=lines.append)
    assert "(Sequential)" in lines[0] and f"Total params: {model.count_params():,}" in lines[0]
    first = model.layers[0]
    assert model.get_weights()[0].shape == first.get_weights()[0].shape == (7, 7, 3, 8)
    path = tmp_path / "resnet.npz"
    model.save_weights(path)
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    model.load_weights(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), expected)
    np.testing.assert_allclose(plain_predict(model, x), expected, rtol=1e-5, atol=1e-6)   # the plan's



@pytest.mark.parametrize("block", [lambda: tut.ConvBlock(3, strides=2), lambda: tut.IdentityBlock(3)],
                         ids=["conv block (nested Sequential, one relu called twice)", "identity block"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_subclassed_blocks_pass_gradient_checks(block, training):
    with floatx_scope("float64"):
        model = block()
        x = np.random.default_rng(1).standard_normal((2, 5, 5, 3))
        model(x)                                                   # traced and built here
    randomize_offsets(model, np.random.default_rng(2))
    report = gradcheck.check_model(model, x, training=training, max_entries=10)
    assert_model_gradients_match(report, model, "subclassed block", training=training)


def test_a_layer_called_twice_in_call_sums_its_gradients():
    class Twice(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(3, activation="tanh")

        def call(self, x):
            return self.dense(self.dense(x))

    with floatx_scope("float64"):
        model = Twice()
        x = np.random.default_rng(3).standard_normal((4, 3))
        model(x)
    report = gradcheck.check_model(model, x, max_entries=None)
    assert_model_gradients_match(report, model, "subclassed: a layer called twice", tol=1e-7)


def test_branching_on_values_in_call_is_a_clear_error():
    class Branchy(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(2)

        def call(self, x):
            return self.dense(x) if x else x

    with pytest.raises(TypeError, match="cannot branch on array values"):
        Branchy()(np.zeros((1, 3), "float32"))


def test_sequential_ways_of_building():
    x = np.random.default_rng(4).standard_normal((2, 4)).astype("float32")
    identity = keras.Sequential()
    np.testing.assert_array_equal(identity(x), x)
    identity.forward(x, training=True)
    np.testing.assert_array_equal(identity.backward(np.ones_like(x)), np.ones_like(x))

    declared = keras.Sequential([layers.Dense(3, input_shape=(4,)), layers.Dense(2)])
    assert declared.built and declared.count_params() == 4 * 3 + 3 + 3 * 2 + 2     # built at once
    later = keras.Sequential()
    later.add(layers.Dense(3))
    later.add(layers.Dense(2))
    assert not later.built
    later(x)                                                     # traced on its first call
    later.set_weights(declared.get_weights())
    np.testing.assert_array_equal(later(x), declared(x))

    inputs = keras.Input(shape=(4,))
    outer = keras.Model(inputs, layers.Dense(1)(declared(inputs)))       # nested in a functional model
    assert [type(layer).__name__ for layer in outer.layers] == ["InputLayer", "Sequential", "Dense"]
    assert outer.count_params() == declared.count_params() + 3


def test_layer_weight_accessors_and_a_failed_set_changes_nothing():
    dense = layers.Dense(2)
    dense(np.zeros((1, 3), "float32"))
    assert [w.shape for w in dense.weights] == [(3, 2), (2,)]
    assert len(dense.trainable_weights) == 2 and dense.non_trainable_weights == []
    before = dense.get_weights()
    with pytest.raises(ValueError, match="weight 'bias' has shape"):
        dense.set_weights([np.ones((3, 2)), np.ones(3)])
    for a, b in zip(before, dense.get_weights()):
        np.testing.assert_array_equal(a, b)
    bn = layers.BatchNormalization()
    bn(np.zeros((2, 3), "float32"))
    assert len(bn.trainable_weights) == 2 and len(bn.non_trainable_weights) == 2


def test_the_keras_namespace_has_keras_module_layout():
    from minires.keras.applications.resnet50 import decode_predictions, preprocess_input  # noqa: F401
    from minires.keras.preprocessing.image import img_to_array, load_img  # noqa: F401
    for name in ("Model", "Sequential", "Input", "layers", "models", "optimizers", "losses", "metrics",
                 "callbacks", "initializers", "applications", "utils", "backend"):
        assert hasattr(keras, name), name
    for name in ("Layer", "add", "concatenate", "Dropout", "Conv2D", "BatchNormalization"):
        assert hasattr(keras.layers, name), name
    assert keras.optimizers.Adam and keras.callbacks.EarlyStopping and keras.backend.clear_session
    a = keras.initializers.glorot_uniform(seed=0)((3, 3))
    np.testing.assert_array_equal(a, keras.initializers.glorot_uniform(seed=0)((3, 3)))
    import minires
    assert minires.keras is keras


# --- Keras itself as the oracle --------------------------------------------------------
@pytest.fixture(scope="module")
def keras_tutorial():
    """The same tutorial source, executed with Keras's imports instead of minires's."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    real_keras = pytest.importorskip("keras")
    namespace = with_imports(tut, "import keras\nfrom keras import layers\n")
    real_keras.utils.set_random_seed(0)
    return namespace


@pytest.mark.slow
@pytest.mark.parametrize("build", ["resnet", "vgg"])
def test_keras_builds_the_same_models_from_the_same_source(keras_tutorial, build):
    x, _ = images(3)
    if build == "resnet":
        # Keras 3 refuses to call an empty Sequential (Keras 2 passed its input through),
        # so here every stage starts with a strided ConvBlock: no shortcut is empty
        theirs = keras_tutorial["ResNet"](10, (8, 16), first_strides=2)
        set_random_seed(0)
        ours = tut.ResNet(10, (8, 16), first_strides=2)
        theirs(x)
    else:
        theirs, ours = keras_tutorial["sequential_vgg"](width=8), tut.sequential_vgg(width=8)
    ours(x)
    assert ours.count_params() == theirs.count_params()
    weights = [np.asarray(w) for w in theirs.get_weights()]
    rng = np.random.default_rng(5)
    weights = [w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in weights]
    weights = [np.abs(w) + 0.5 if "variance" in v.path else w for w, v in zip(weights, theirs.weights)]
    theirs.set_weights(weights)
    ours.set_weights(weights)
    expected = np.asarray(theirs.predict(x, verbose=0))
    np.testing.assert_allclose(ours.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_a_subclassed_keras_layer_is_one_node_of_a_functional_model():
    class MLPBlock(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.hidden = [layers.Dense(4, activation="tanh"), layers.Dense(4, activation="tanh")]

        def call(self, inputs):
            x = inputs
            for layer in self.hidden:
                x = layer(x)
            return x + inputs

    with floatx_scope("float64"):
        inputs = keras.Input(shape=(4,))
        block = MLPBlock()
        model = keras.Model(inputs, layers.Dense(2)(block(inputs)))
    assert [type(layer).__name__ for layer in model.layers] == ["InputLayer", "MLPBlock", "Dense"]
    assert model.count_params() == 2 * (4 * 4 + 4) + 4 * 2 + 2
    x = np.random.default_rng(6).standard_normal((3, 4))
    report = gradcheck.check_model(model, x, max_entries=None)
    assert_model_gradients_match(report, model, "keras.layers.Layer subclass", tol=1e-7)


def test_get_file_insists_on_a_checksum(tmp_path):
    with pytest.raises(ValueError, match="pass its MD5 as file_hash="):
        keras.utils.get_file("data.bin", origin="http://127.0.0.1:9/data.bin", cache_dir=str(tmp_path))
