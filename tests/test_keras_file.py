"""Keras 3's own .keras file, both ways, without Keras at runtime (issue 30).

Without Keras, the reader is checked on files Keras wrote once (tests/data/*.keras,
with Keras's outputs beside them) and the writer on what minires reads back.
With Keras installed (dev-only oracle, KERAS_BACKEND=torch), each of five small
models and ResNet-50 goes Keras -> minires and minires -> Keras: outputs within
1e-5 relative, equal parameter counts, the compile configuration and optimizer
state carried over.
"""
import io
import json
import os
import pathlib
import sys
import zipfile

import h5py
import numpy as np
import pytest
from conftest import relative_difference

import keras_file_models as models
from minires import keras as mk
from minires import optim
from minires.applications import CifarResNet, ResNet50, TorchResNet18
from minires.io import keras_h5
from minires.io.keras_file import KerasFileError, object_paths
from minires.keras.models import model_from_json
from minires.keras.saving import load_model
from minires.layers import clear_session
from minires.saving import ConfigError, optimizer_variables

DATA = pathlib.Path(__file__).resolve().parent / "data"
NAMES = list(models.BUILDERS)
TOLERANCE = 1e-5

# Keras 3.15's get_config keys of each layer, beyond name, trainable and dtype.
KERAS_KEYS = {
    "Conv2D": "filters kernel_size strides padding data_format dilation_rate groups activation "
              "use_bias kernel_initializer bias_initializer kernel_regularizer bias_regularizer "
              "activity_regularizer kernel_constraint bias_constraint",
    "Dense": "units activation use_bias kernel_initializer bias_initializer kernel_regularizer "
             "bias_regularizer kernel_constraint bias_constraint quantization_config",
    "BatchNormalization": "axis momentum epsilon center scale beta_initializer gamma_initializer "
                          "moving_mean_initializer moving_variance_initializer beta_regularizer "
                          "gamma_regularizer beta_constraint gamma_constraint synchronized renorm "
                          "renorm_clipping renorm_momentum",
    "Activation": "activation", "ReLU": "max_value negative_slope threshold",
    "LeakyReLU": "negative_slope", "Softmax": "axis",
    "MaxPooling2D": "pool_size padding strides data_format",
    "AveragePooling2D": "pool_size padding strides data_format",
    "GlobalAveragePooling2D": "data_format keepdims", "GlobalMaxPooling2D": "data_format keepdims",
    "ZeroPadding2D": "padding data_format", "Flatten": "data_format", "Reshape": "target_shape",
    "Rescaling": "scale offset", "UpSampling2D": "size data_format interpolation",
    "Dropout": "rate seed noise_shape", "Add": "", "Average": "", "Multiply": "", "Maximum": "",
    "Minimum": "", "Concatenate": "axis",
}
LAYERS = {   # one instance of each, built the same way in either library
    "Conv2D": lambda L: L.Conv2D(4, 3, strides=2, padding="same", activation="relu",
                                 kernel_initializer="he_normal"),
    "Dense": lambda L: L.Dense(3, use_bias=False), "Activation": lambda L: L.Activation("softmax"),
    "BatchNormalization": lambda L: L.BatchNormalization(axis=3, momentum=0.9, epsilon=1e-5),
    "ReLU": lambda L: L.ReLU(), "LeakyReLU": lambda L: L.LeakyReLU(0.2),
    "Softmax": lambda L: L.Softmax(axis=1),
    "MaxPooling2D": lambda L: L.MaxPooling2D(3, 2, padding="same"),
    "AveragePooling2D": lambda L: L.AveragePooling2D(2),
    "GlobalAveragePooling2D": lambda L: L.GlobalAveragePooling2D(),
    "GlobalMaxPooling2D": lambda L: L.GlobalMaxPooling2D(),
    "ZeroPadding2D": lambda L: L.ZeroPadding2D(((1, 2), (3, 4))), "Flatten": lambda L: L.Flatten(),
    "Reshape": lambda L: L.Reshape((4, -1)), "Rescaling": lambda L: L.Rescaling(1 / 255, 0.5),
    "UpSampling2D": lambda L: L.UpSampling2D(3),
    "Dropout": lambda L: L.Dropout(0.3, noise_shape=(None, 1, 1, None), seed=3),
    "Add": lambda L: L.Add(), "Average": lambda L: L.Average(), "Multiply": lambda L: L.Multiply(),
    "Maximum": lambda L: L.Maximum(), "Minimum": lambda L: L.Minimum(),
    "Concatenate": lambda L: L.Concatenate(axis=1),
}


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras", exc_type=ImportError)   # a backend missing too


def keras_outputs(name):
    with np.load(DATA / "keras_outputs.npz") as stored:
        return stored[f"{name}/x"], stored[f"{name}/y"], int(stored[f"{name}/params"])


def minires_model(name, train=True):
    model = models.BUILDERS[name](mk)
    models.randomize_minires(model)
    return models.trained(name, model, mk, {"shuffle": False}) if train else model


def assert_compiled_as_built(model, name):
    if name not in models.HYPERPARAMETERS:
        assert model.compiled is None
        return
    cls, expected = models.HYPERPARAMETERS[name]
    optimizer = model.compiled.optimizer
    assert type(optimizer).__name__ == cls
    assert {key: getattr(optimizer, key) for key in expected} == expected
    assert optimizer.iterations == 1


def assert_same_weights(a, b):
    assert len(a.get_weights()) == len(b.get_weights())
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)


def without_input_names(config):
    """A config with its Sequentials' InputLayer names left out: a minires Sequential
    makes a new input layer (input_layer_<n>) whenever it is traced."""
    text = json.dumps(config)
    return json.loads(__import__("re").sub(r'"input_layer(_\d+)?"', '"input_layer"', text))


# === files Keras wrote (no Keras needed) ========================================================
@pytest.mark.parametrize("name", NAMES)
def test_a_file_keras_wrote_loads_with_keras_outputs(name):
    x, expected, params = keras_outputs(name)
    path = DATA / f"{name}.keras"
    before = path.read_bytes()
    model = load_model(path)
    assert relative_difference(model.predict(x, verbose=0), expected) <= TOLERANCE
    assert model.count_params() == params
    assert_compiled_as_built(model, name)
    assert path.read_bytes() == before                   # only ever read


def test_a_keras_file_nested_sequential_keeps_its_structure():
    model = load_model(DATA / "nested.keras")
    inner = model.get_layer("inner")
    assert isinstance(inner, mk.Sequential)
    assert [type(layer).__name__ for layer in inner.layers] == ["Conv2D", "BatchNormalization",
                                                               "LeakyReLU"]
    assert inner.layers[1].momentum == 0.9 and inner.layers[2].negative_slope == pytest.approx(0.1)
    assert [path for path, layer in object_paths(model) if layer is inner.layers[0]] == \
        ["layers/sequential/layers/conv2d"]


def test_compile_false_skips_the_compile_configuration():
    assert load_model(DATA / "resnet_block.keras", compile=False).compiled is None


def test_the_optimizer_state_keras_wrote_is_read_in_minires_form():
    """Keras's SGD momentum is -lr times minires's velocity (saving.optimizer_variables):
    read back and written again, it gives the file's variables."""
    model = load_model(DATA / "sequential_cnn.keras")
    with zipfile.ZipFile(DATA / "sequential_cnn.keras") as archive:
        with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as f:
            stored = [f["optimizer/vars"][str(i)][()] for i in range(len(f["optimizer/vars"]))]
    written = optimizer_variables(model)
    assert len(written) == len(stored) == 2 + 8          # iterations, lr, one slot per weight
    assert any(np.abs(s).max() > 0 for s in stored[2:])
    for ours, theirs in zip(written, stored):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9)


# === minires writes, minires reads ==============================================================
@pytest.mark.parametrize("name", NAMES)
def test_minires_round_trip(tmp_path, name):
    model = minires_model(name)
    x = models.inputs_for(model)
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert_same_weights(model, loaded)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    assert without_input_names(loaded.get_config()) == without_input_names(model.get_config())
    assert_compiled_as_built(loaded, name)
    if model.compiled is not None:                       # the optimizer's state came back too:
        y = models.labels_for(name, model)               # one more step moves both alike
        for a, b in zip(model.layers, loaded.layers):    # (Dropout drawing the same masks)
            if isinstance(a, mk.layers.Dropout):
                b.generator.bit_generator.state = a.generator.bit_generator.state
        model.train_on_batch(x, y)
        loaded.train_on_batch(x, y)
        for a, b in zip(model.get_weights(), loaded.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert os.listdir(tmp_path) == ["m.keras"]


def test_the_file_holds_what_keras_writes(tmp_path):
    minires_model("nested").save(tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        assert archive.namelist() == ["metadata.json", "config.json", "model.weights.h5"]
        metadata = json.loads(archive.read("metadata.json"))
        config = json.loads(archive.read("config.json"))
    assert metadata["keras_version"].startswith("3.")
    assert config["class_name"] == "Functional" and config["module"] == "keras.src.models.functional"
    inner = next(entry for entry in config["config"]["layers"] if entry["name"] == "inner")
    assert inner["class_name"] == "Sequential" and inner["config"]["layers"][0]["class_name"] == \
        "InputLayer"
    assert inner["inbound_nodes"][0]["args"][0]["config"]["keras_history"] == ["re_lu", 0, 0]
    assert config["compile_config"]["optimizer"]["class_name"] == "RMSprop"


def test_save_is_atomic_and_refuses_what_keras_cannot_hold(tmp_path):
    """A compile configuration Keras has no form for is refused before the file
    is touched: the earlier file stays whole and no temporary is left."""
    path = tmp_path / "m.keras"
    path.write_bytes(b"an earlier file")
    model = minires_model("resnet_block", train=False)
    model.compile(optimizer=optim.SGD(0.1, momentum=0.9, weight_decay=5e-4),
                  loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"minires\.optim\.SGD\(weight_decay=0\.0005\) adds "
                                         r"weight_decay \* w to the gradient.*compile with "
                                         r"minires\.keras\.optimizers"):
        model.save(path)
    assert path.read_bytes() == b"an earlier file" and os.listdir(tmp_path) == ["m.keras"]
    with pytest.raises(ValueError, match=r"whole models as Keras 3's '\.keras' files"):
        model.save(tmp_path / "m.json")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.save(path)
    assert load_model(path).compiled.optimizer.learning_rate == 0.001


def test_an_unbuilt_sequential_round_trips(tmp_path):
    model = mk.Sequential([mk.layers.Dense(4), mk.layers.Dense(2)], name="later")
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert not loaded.built and [type(layer).__name__ for layer in loaded.layers] == ["Dense", "Dense"]
    assert loaded.predict(np.ones((1, 3), "float32"), verbose=0).shape == (1, 2)


@pytest.mark.parametrize("make", [lambda: CifarResNet(blocks=(1, 1), width=8),
                                  lambda: TorchResNet18(input_shape=(16, 16, 3))])
def test_applications_round_trip(tmp_path, make):
    model = make()
    models.randomize_minires(model)
    x = models.inputs_for(model, count=2)
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.count_params() == model.count_params()


# === configs, JSON, weights files ============================================================
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_layer_gives_keras_keys_and_comes_back_from_them(name):
    layer = LAYERS[name](mk.layers)
    config = layer.get_config()
    assert set(config) == {"name", "trainable", "dtype", *KERAS_KEYS[name].split()}
    again = type(layer).from_config(json.loads(json.dumps(config)))
    assert again.get_config() == config and again is not layer


def test_to_json_and_model_from_json():
    model = minires_model("inception", train=False)
    copy = model_from_json(model.to_json())
    assert [(type(a), a.name) for a in copy.layers] == [(type(a), a.name) for a in model.layers]
    assert copy.get_config() == model.get_config() and copy.count_params() == model.count_params()
    assert mk.Model.from_config(model.get_config()).get_config() == model.get_config()
    seq = minires_model("sequential_cnn", train=False)
    again = mk.Sequential.from_config(seq.get_config())
    assert isinstance(again, mk.Sequential) and again.count_params() == seq.count_params()
    assert without_input_names(again.get_config()) == without_input_names(seq.get_config())


@pytest.mark.parametrize("suffix", [".weights.h5", ".h5", ".npz"])
def test_save_weights_suffix_decides_and_load_weights_reads_it_back(tmp_path, suffix):
    name = "nested" if suffix != ".h5" else "resnet_block"   # keras_h5 reads no nested model
    source = minires_model(name, train=False)
    clear_session()                                          # the same layer names again
    target = models.BUILDERS[name](mk)
    path = tmp_path / f"w{suffix}"
    source.save_weights(path)
    assert os.listdir(tmp_path) == [path.name]
    if suffix == ".h5":            # the classic layout: what minires.io.keras_h5 reads
        assert keras_h5.read_layer_names(path) == [layer.name for layer in source.layers]
        keras_h5.load_by_name(target, path)
    else:
        target.load_weights(path)
    assert_same_weights(source, target)


def test_save_weights_refuses_a_keras_name(tmp_path):
    path = tmp_path / "w.keras"
    path.write_bytes(b"an earlier file")
    with pytest.raises(ValueError, match=r"a \.keras file holds a whole model: write it with "
                                         r"model\.save"):
        minires_model("merges", train=False).save_weights(path)
    assert path.read_bytes() == b"an earlier file" and os.listdir(tmp_path) == ["w.keras"]


def test_load_weights_of_a_keras_file(tmp_path):
    model = models.BUILDERS["resnet_block"](mk)
    assert model.load_weights(DATA / "resnet_block.keras") == []
    x, expected, _ = keras_outputs("resnet_block")
    assert relative_difference(model.predict(x, verbose=0), expected) <= TOLERANCE


# === what minires refuses =======================================================================
def rewritten(tmp_path, source, edit):
    """A copy of .keras file ``source`` whose config.json ``edit`` changed."""
    with zipfile.ZipFile(source) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    path = tmp_path / "edited.keras"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def layer_entry(config, class_name, index=0):
    return [e for e in config["config"]["layers"] if e["class_name"] == class_name][index]


@pytest.mark.parametrize("key, value, message", [
    ("dilation_rate", [2, 2], r"dilation_rate=\[2, 2\] is not supported: minires implements only "
                              r"dilation_rate=\(1, 1\)"),
    ("groups", 2, r"groups=2 is not supported"),
    ("data_format", "channels_first", r"data_format='channels_first' is not supported"),
    ("kernel_constraint", {"module": "keras.constraints", "class_name": "MaxNorm", "config": {}},
     r"kernel_constraint='MaxNorm' is not supported"),
    ("kernel_regularizer", {"module": "keras.regularizers", "class_name": "OrthogonalRegularizer",
                            "config": {}}, r"argument 'kernel_regularizer' is a serialized "
                                           r"'OrthogonalRegularizer' object.*minires does not have"),
    ("kernel_initializer", {"module": "keras.initializers", "class_name": "Orthogonal",
                            "config": {}}, r"'Orthogonal' object.*it has GlorotNormal"),
    ("activation", "gelu", r"unknown activation 'gelu'"),
    ("dtype", {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "mixed_float16"}},
     r"dtype 'mixed_float16' is not supported"),
    ("flavour", 1, r"takes no argument 'flavour'; refused rather than ignored"),
])
def test_an_argument_minires_lacks_is_refused_by_name(tmp_path, key, value, message):
    edited = []

    def edit(config):
        entry = layer_entry(config, "Conv2D")
        entry["config"][key] = value
        edited.append(entry["name"])
    path = rewritten(tmp_path, DATA / "inception.keras", edit)
    with pytest.raises(KerasFileError, match=message) as error:
        load_model(path)
    assert str(error.value).startswith(f"{path}: config.json: ")
    assert f"model 'inception': layer {edited[0]!r}" in str(error.value)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["compile_config"]["optimizer"]["config"].update(clipnorm=1.0),
     r"optimizer: SGD: clipnorm=1\.0 is a Keras option minires does not implement"),
    (lambda c: c["compile_config"]["optimizer"]["config"].update(use_ema=True),
     r"optimizer: SGD: use_ema=True is a Keras option"),
    (lambda c: c["compile_config"]["optimizer"]["config"].update(loss_scale_factor=128.0),
     r"optimizer: SGD: loss_scale_factor=128\.0 is a Keras option"),
    (lambda c: c["compile_config"]["optimizer"]["config"].update(flavour=1),
     r"optimizer: SGD: flavour=1 is not an argument of it"),
    (lambda c: c["compile_config"]["optimizer"]["config"].update(
        learning_rate={"module": "keras.optimizers.schedules", "class_name": "CosineDecay"}),
     r"SGD learning_rate .*a learning-rate schedule"),
    (lambda c: c["compile_config"]["optimizer"]["config"].update(momentum=1.5),
     r"optimizer: SGD: momentum"),
    (lambda c: c["compile_config"]["optimizer"].update(class_name="Nadam"),
     r"optimizer 'Nadam'.*minires has SGD, Adam, RMSprop"),
    (lambda c: c["compile_config"].update(loss="mse"), r"loss 'mse' is not supported"),
    (lambda c: c["compile_config"].update(loss_weights=[0.5]), r"loss_weights=\[0.5\]"),
])
def test_a_compile_configuration_minires_lacks_is_refused(tmp_path, edit, message):
    path = rewritten(tmp_path, DATA / "sequential_cnn.keras", edit)
    with pytest.raises(KerasFileError, match=message + r".*compile=False"):
        load_model(path)
    assert load_model(path, compile=False).compiled is None


def test_a_class_minires_lacks_is_refused_by_name_and_never_imported(tmp_path):
    def edit(config):
        entry = layer_entry(config, "Dense")
        entry.update(module="minires_test_never_imported", class_name="Dense2")
    path = rewritten(tmp_path, DATA / "inception.keras", edit)
    with pytest.raises(KerasFileError, match=r"class 'Dense2' \(module 'minires_test_never_"
                                             r"imported'\) is not one minires has.*custom_objects"):
        load_model(path)
    assert "minires_test_never_imported" not in sys.modules


def test_a_lambda_is_refused_whatever_safe_mode(tmp_path):
    def edit(config):
        entry = layer_entry(config, "ReLU")
        entry.update(class_name="Lambda", config={"name": "re_lu", "function": {
            "class_name": "__lambda__", "config": {"code": "4wEAAAAAAAAA"}}})
    path = rewritten(tmp_path, DATA / "nested.keras", edit)
    for safe_mode in (True, False):
        with pytest.raises(KerasFileError, match=r"a Lambda layer holds Python code, which minires "
                                                 r"never runs"):
            load_model(path, safe_mode=safe_mode)


def two_convs_class(k):
    """A subclassed model in library ``k``: Keras names its weights by attribute
    (bn, conv, extra/dense, extra/dense_1)."""
    class TwoConvs(k.Model):
        def __init__(self, filters=3, **kwargs):
            super().__init__(**kwargs)
            self.filters = filters
            self.conv = k.layers.Conv2D(filters, 3, padding="same")
            self.bn = k.layers.BatchNormalization()
            self.extra = [k.layers.Dense(4), k.layers.Dense(2)]

        def call(self, x, training=None):
            return self.extra[1](self.extra[0](self.bn(self.conv(x), training=training)))

        def get_config(self):
            return {**super().get_config(), "filters": self.filters}
    return TwoConvs


TwoConvs = two_convs_class(mk)


def test_a_subclassed_model_needs_its_class(tmp_path):
    model = TwoConvs(filters=5)
    model.build((None, 6, 6, 2))
    models.randomize_minires(model)
    model.save(tmp_path / "m.keras")
    assert [path for path, layer in object_paths(model) if layer.params] == \
        ["bn", "conv", "extra/dense", "extra/dense_1"]
    with pytest.raises(KerasFileError, match=r"class 'TwoConvs'.*custom_objects=\{'TwoConvs': "
                                             r"YourClass\}"):
        load_model(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras", custom_objects={"TwoConvs": TwoConvs})
    assert isinstance(loaded, TwoConvs) and loaded.filters == 5
    x = np.random.default_rng(0).uniform(size=(2, 6, 6, 2)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_model_from_json_refuses_what_it_cannot_rebuild():
    config = json.loads(minires_model("merges", train=False).to_json())
    config["config"]["layers"][1]["class_name"] = "Cropping2D"
    with pytest.raises(ConfigError, match=r"class 'Cropping2D'"):
        model_from_json(json.dumps(config))


# === with Keras (the oracle) ===================================================================
def keras_model(keras, name):
    keras.utils.set_random_seed(0)
    model = models.BUILDERS[name](keras)
    models.randomize_keras(model)
    return models.trained(name, model, keras, {"shuffle": False})


def keras_optimizer_variables(model):
    return [np.array(v.numpy()) for v in model.optimizer.variables]


@pytest.mark.parametrize("name", NAMES)
def test_keras_saves_minires_loads(keras, tmp_path, name):
    theirs = keras_model(keras, name)
    theirs.save(tmp_path / "k.keras")
    ours = load_model(tmp_path / "k.keras")
    x = models.inputs_for(ours)
    difference = relative_difference(ours.predict(x, verbose=0), theirs.predict(x, verbose=0))
    print(f"\n{name}: Keras -> minires, relative difference {difference:.1e}, "
          f"{ours.count_params():,} parameters")
    assert difference <= TOLERANCE
    assert ours.count_params() == theirs.count_params()
    assert [layer.name for layer in ours.layers] == [layer.name for layer in theirs.layers]
    assert_compiled_as_built(ours, name)
    if theirs.compiled:
        for a, b in zip(optimizer_variables(ours), keras_optimizer_variables(theirs)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_minires_saves_keras_loads(keras, tmp_path, name):
    ours = minires_model(name)
    ours.save(tmp_path / "m.keras")
    theirs = keras.saving.load_model(tmp_path / "m.keras")
    x = models.inputs_for(ours)
    difference = relative_difference(theirs.predict(x, verbose=0), ours.predict(x, verbose=0))
    print(f"\n{name}: minires -> Keras, relative difference {difference:.1e}")
    assert difference <= TOLERANCE
    assert theirs.count_params() == ours.count_params()
    if name in models.HYPERPARAMETERS:
        cls, expected = models.HYPERPARAMETERS[name]
        config = theirs.optimizer.get_config()
        assert "Keras" + type(theirs.optimizer).__name__ == cls
        assert {k: config[k] for k in expected} == pytest.approx(expected, rel=1e-7)
        for a, b in zip(keras_optimizer_variables(theirs), optimizer_variables(ours)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["w.weights.h5", "w.h5"])
def test_keras_reads_the_weights_files_minires_writes(keras, tmp_path, name):
    ours, theirs = minires_model("nested"), models.nested(keras)
    x = models.inputs_for(ours)
    ours.save_weights(tmp_path / name)
    theirs.load_weights(tmp_path / name)
    assert relative_difference(theirs.predict(x, verbose=0), ours.predict(x, verbose=0)) <= TOLERANCE


def test_minires_reads_the_weights_file_keras_writes(keras, tmp_path):
    theirs, ours = keras_model(keras, "nested"), models.nested(mk)
    theirs.save_weights(tmp_path / "w.weights.h5")
    assert ours.load_weights(tmp_path / "w.weights.h5") == []
    x = models.inputs_for(ours)
    assert relative_difference(ours.predict(x, verbose=0), theirs.predict(x, verbose=0)) <= TOLERANCE


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_get_config_is_keras_own(keras, name):
    theirs, ours = LAYERS[name](keras.layers), LAYERS[name](mk.layers)
    expected = theirs.get_config()
    expected["name"] = ours.name
    for value in expected.values():             # Keras 3.15's initializer axes, written null
        if isinstance(value, dict) and value.get("module") == "keras.initializers":
            assert value["config"].pop("input_axes", None) is None
            assert value["config"].pop("output_axes", None) is None
    assert ours.get_config() == expected
    assert type(theirs).from_config(ours.get_config()).get_config()["name"] == ours.name


def test_a_keras_subclassed_model_loads_into_its_minires_twin(keras, tmp_path):
    theirs = two_convs_class(keras)(filters=5)
    x = np.random.default_rng(0).uniform(size=(2, 6, 6, 2)).astype("float32")
    theirs(x)                                       # built by a call, as Keras builds it
    models.randomize_keras(theirs)
    theirs.save(tmp_path / "k.keras")
    ours = load_model(tmp_path / "k.keras", custom_objects={"TwoConvs": TwoConvs})
    assert ours.filters == 5
    assert relative_difference(ours.predict(x, verbose=0), theirs.predict(x, verbose=0)) <= TOLERANCE


@pytest.mark.slow
def test_keras_resnet50_file_gives_keras_predictions(keras, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-120, 140, (2, 224, 224, 3)).astype("float32")
    logits = keras.applications.ResNet50(weights=None, classifier_activation=None)
    models.randomize_keras(logits)
    weights = logits.get_weights()
    scale = 4 / np.abs(logits.predict(x, verbose=0)).max()    # logits of a few units: the
    weights[-2:] = [w * scale for w in weights[-2:]]           # softmax is not saturated
    for activation in (None, "softmax"):
        theirs = keras.applications.ResNet50(weights=None, classifier_activation=activation)
        theirs.set_weights(weights)
        theirs.save(tmp_path / "resnet50.keras")
        ours = load_model(tmp_path / "resnet50.keras")
        expected = theirs.predict(x, verbose=0)
        difference = relative_difference(ours.predict(x, verbose=0), expected)
        print(f"\nKeras ResNet50 ({activation or 'logits'}) -> minires: {difference:.1e}")
        assert difference <= TOLERANCE and ours.count_params() == theirs.count_params() == 25_636_712
        assert activation is None or expected.max() < 0.5     # not saturated


def dotless(model):
    """A copy of ``model`` whose layer names have '_' for '.': Keras's torch backend
    keeps variables in a torch ParameterDict, which refuses '.' in names."""
    text = json.dumps(model.get_config())
    for layer in model.layers:
        text = text.replace(f'"{layer.name}"', f'"{layer.name.replace(".", "_")}"')
    copy = mk.Model.from_config(json.loads(text))
    copy.set_weights(model.get_weights())
    return copy


@pytest.mark.slow
@pytest.mark.parametrize("make, shape", [(lambda: ResNet50(), (1, 224, 224, 3)),
                                         (lambda: CifarResNet(), (2, 32, 32, 3)),
                                         (lambda: dotless(TorchResNet18()), (2, 32, 32, 3))])
def test_minires_applications_load_in_keras(keras, tmp_path, make, shape):
    ours = make()
    models.randomize_minires(ours)
    ours.save(tmp_path / "m.keras")
    theirs = keras.saving.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(1).uniform(-1, 1, shape).astype("float32")
    difference = relative_difference(theirs.predict(x, verbose=0), ours.predict(x, verbose=0))
    print(f"\n{ours.name}: minires -> Keras, {difference:.1e}, {ours.count_params():,} parameters")
    assert difference <= TOLERANCE and theirs.count_params() == ours.count_params()


# === metrics in the compile configuration ======================================================
def metric_choices(k):
    """One of every metric form Keras writes: a name, keras.metrics objects (one with
    an argument), a MeanMetricWrapper of a metric function, a bare function."""
    return ["accuracy", k.metrics.SparseCategoricalAccuracy(name="sca"),
            k.metrics.BinaryAccuracy(threshold=0.3), k.metrics.CategoricalAccuracy(name="cat"),
            k.metrics.Accuracy(name="same"), k.metrics.Mean(name="average"),
            k.metrics.MeanMetricWrapper(k.metrics.sparse_categorical_accuracy, name="wrapped"),
            k.metrics.categorical_accuracy]


def compiled_with_metrics(k):
    model = models.BUILDERS["sequential_cnn"](k)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  metrics=metric_choices(k))
    return model


def compile_config(path):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))["compile_config"]


def described(metrics):
    """(name, class, function, threshold) of each compiled metric of minires."""
    return [(name, type(m).__name__, getattr(getattr(m, "fn", None), "__name__", None),
             getattr(m, "fn_kwargs", {}).get("threshold")) for name, m in metrics.items()]


def test_metrics_round_trip(tmp_path):
    model = compiled_with_metrics(mk)
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert described(loaded.compiled.metrics) == described(model.compiled.metrics)
    assert list(loaded.compiled.metrics) == ["accuracy", "sca", "binary_accuracy", "cat", "same",
                                             "average", "wrapped", "categorical_accuracy"]
    assert compile_config(tmp_path / "m.keras")["metrics"][2]["config"]["threshold"] == 0.3


def test_metrics_minires_cannot_write_or_read_are_refused(tmp_path):
    model = models.BUILDERS["sequential_cnn"](mk)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy",
                  metrics=[lambda y_true, y_pred: y_pred[:, 0]])
    with pytest.raises(ValueError, match=r"metric '<lambda>' \(MeanMetricWrapper of <lambda>\) "
                                         r"has no Keras equivalent"):
        model.save(tmp_path / "m.keras")
    assert not (tmp_path / "m.keras").exists()
    for metric, message in [({"module": "keras.metrics", "class_name": "AUC", "config": {}},
                             r"metric 'AUC' \(module 'keras.metrics'\); minires has Mean, "),
                            ("mse", r"metric 'mse' is not supported"),
                            ({"module": "keras.metrics", "class_name": "BinaryAccuracy",
                              "config": {"name": "b", "thresholds": [0.5]}},
                             r"BinaryAccuracy config .*thresholds"),
                            ({"module": "builtins", "class_name": "function", "config": "os.system",
                              "registered_name": "function"}, r"metric function .*os\.system")]:
        path = rewritten(tmp_path, DATA / "sequential_cnn.keras",
                         lambda c: c["compile_config"].update(metrics=[metric]))
        with pytest.raises(KerasFileError, match=r"compile_config: metrics: " + message
                                                 + r".*compile=False"):
            load_model(path)
        assert load_model(path, compile=False).compiled is None


def test_keras_writes_the_metrics_minires_writes(keras, tmp_path):
    compiled_with_metrics(keras).save(tmp_path / "k.keras")
    compiled_with_metrics(mk).save(tmp_path / "m.keras")
    theirs, ours = compile_config(tmp_path / "k.keras"), compile_config(tmp_path / "m.keras")
    assert ours["metrics"] == theirs["metrics"]
    loaded = load_model(tmp_path / "k.keras")
    assert described(loaded.compiled.metrics) == described(compiled_with_metrics(mk).compiled.metrics)
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert again.get_compile_config()["metrics"] == theirs["metrics"]


# === ModelCheckpoint: Keras 3's two kinds of file ==============================================
def test_model_checkpoint_saves_the_model_to_keras_and_weights_by_suffix(tmp_path):
    clear_session()                             # the .npz checkpoint goes by layer names
    model = minires_model("sequential_cnn", train=False)
    model.compile(optimizer=mk.optimizers.SGD(0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = models.inputs_for(model, count=6)
    y = np.arange(6) % 3
    whole = mk.callbacks.ModelCheckpoint(str(tmp_path / "m-{epoch}.keras"))
    weights = mk.callbacks.ModelCheckpoint(str(tmp_path / "w.weights.h5"), save_weights_only=True)
    npz = mk.callbacks.ModelCheckpoint(str(tmp_path / "w.npz"))        # minires's: weights only
    model.fit(x, y, epochs=2, batch_size=3, shuffle=False, verbose=0,
              callbacks=[whole, weights, npz])
    assert sorted(os.listdir(tmp_path)) == ["m-1.keras", "m-2.keras", "w.npz", "w.weights.h5"]
    loaded = load_model(tmp_path / "m-2.keras")
    assert_same_weights(loaded, model)
    assert loaded.compiled.optimizer.iterations == model.compiled.optimizer.iterations == 4
    assert list(loaded.compiled.metrics) == ["accuracy"]
    for name in ("w.weights.h5", "w.npz"):
        clear_session()
        fresh = minires_model("sequential_cnn", train=False)
        fresh.load_weights(tmp_path / name)
        assert_same_weights(fresh, model)


@pytest.mark.parametrize("path, weights_only, message", [
    ("m.npz", False, r"must end in '\.keras'"),
    ("m.keras", True, r"must end in '\.weights\.h5' .*a \.keras file is a whole model"),
    ("m.keras", "yes", r"save_weights_only must be True or False"),
])
def test_model_checkpoint_refuses_a_path_its_kind_is_not_written_to(path, weights_only, message):
    with pytest.raises((ValueError, TypeError), match=f"^ModelCheckpoint: .*{message}"):
        mk.callbacks.ModelCheckpoint(path, save_weights_only=weights_only)


@pytest.mark.parametrize("path", ["m.keras", "m.weights.h5", "m.npz"])
@pytest.mark.parametrize("weights_only", [False, True])
def test_model_checkpoint_takes_the_paths_keras_takes(keras, path, weights_only):
    """Keras's suffixes are accepted and refused as Keras 3 does, but for '.npz',
    minires's own. (A whole model to a '.h5' name, which Keras writes as a legacy
    HDF5 model, minires writes as the weights alone: see the test below.)"""
    def accepts(library):
        try:
            library.callbacks.ModelCheckpoint(path, save_weights_only=weights_only)
            return True
        except ValueError:
            return False
    expected = weights_only if path == "m.npz" else accepts(keras)
    assert accepts(mk) == expected


@pytest.mark.parametrize("name", ["m.h5", "m.weights.h5", "m.hdf5"])
def test_a_whole_model_to_an_hdf5_name_saves_its_weights(tmp_path, name):
    """Keras 2 tutorials write ModelCheckpoint('...h5') and model.save('m.h5'):
    minires writes the weights in Keras's layout for the suffix, read back whole."""
    model = minires_model("sequential_cnn", train=False)
    checkpoint = mk.callbacks.ModelCheckpoint(str(tmp_path / f"c-{{epoch}}-{name}"))
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"val_loss": 1.0})
    model.save(tmp_path / name)
    for path in (tmp_path / name, tmp_path / f"c-1-{name}"):
        assert path.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
        clear_session()
        fresh = minires_model("sequential_cnn", train=False)
        fresh.load_weights(path)
        assert_same_weights(fresh, model)


# === HDF5 weights of the depthwise, separable and transposed convolutions ======================
def window_layers(k):
    """One of each, named alike in both libraries."""
    return k.Sequential([k.Input((6, 6, 2)),
                         k.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw"),
                         k.layers.SeparableConv2D(3, 2, name="sep"),
                         k.layers.Conv2DTranspose(2, 3, strides=2, name="up"),
                         k.layers.Conv2D(2, 1, use_bias=False, name="plain")])


def stored_weight_names(path):
    """Every dataset path of an HDF5 file."""
    found = []
    with h5py.File(path, "r") as f:
        f.visit(lambda name: found.append(name) if isinstance(f[name], h5py.Dataset) else None)
    return found


def test_keras2_depthwise_kernel_name_fills_the_kernel():
    ours = window_layers(mk)
    assert [keras_h5.weight_slot(ours.get_layer(layer), layer, name) for layer, name in [
        ("dw", "dw/depthwise_kernel:0"), ("dw", "dw_depthwise_kernel"),
        ("sep", "sep/depthwise_kernel:0"),
        ("sep", "sep/pointwise_kernel:0"), ("up", "up/kernel:0"), ("up", "up/bias:0"),
        ("plain", "plain/depthwise_kernel:0")]] == \
        ["kernel", "kernel", "depthwise_kernel", "pointwise_kernel", "kernel", "bias", None]


@pytest.mark.parametrize("name", ["w.h5", "w.weights.h5"])
def test_window_layers_weights_round_trip_by_name(tmp_path, name):
    ours = window_layers(mk)
    models.randomize_minires(ours)
    ours.save_weights(tmp_path / name)
    fresh = window_layers(mk)
    if name == "w.h5":
        keras_h5.load_by_name(fresh, tmp_path / name)
    else:
        fresh.load_weights(tmp_path / name)
    assert_same_weights(fresh, ours)


@pytest.mark.parametrize("save", ["legacy .h5 model", ".weights.h5"])
def test_window_layers_load_from_the_files_keras_writes(keras, tmp_path, save):
    theirs = window_layers(keras)
    for weight in theirs.weights:
        weight.assign(np.random.default_rng(len(weight.path)).normal(size=weight.shape))
    path = tmp_path / ("m.h5" if save == "legacy .h5 model" else "w.weights.h5")
    theirs.save(path) if save == "legacy .h5 model" else theirs.save_weights(path)
    ours = window_layers(mk)
    if save == "legacy .h5 model":
        assert any(n.endswith("dw/kernel") for n in stored_weight_names(path))
        keras_h5.load_by_name(ours, path)
    else:
        ours.load_weights(path)
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_array_equal(a, np.asarray(b))
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 2)).astype("float32")
    difference = relative_difference(ours.predict(x, verbose=0), theirs.predict(x, verbose=0))
    print(f"\nwindow layers from Keras's {save}: relative difference {difference:.1e}")
    assert difference <= TOLERANCE


def conv_family_model(library, rng=None):
    x_in = library.Input((8, 8, 3))
    y = library.layers.Conv2DTranspose(4, 3, strides=2, padding="same")(x_in)
    y = library.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(y)
    y = library.layers.SeparableConv2D(5, 3, activation="relu")(y)
    return library.Model(x_in, library.layers.GlobalAveragePooling2D()(y))


def test_the_conv_family_round_trips(tmp_path, rng):
    """Conv2DTranspose, DepthwiseConv2D, SeparableConv2D: configs and weights, both ways."""
    model = conv_family_model(mk)
    model.set_weights([0.3 * rng.standard_normal(w.shape).astype("float32") for w in model.get_weights()])
    x = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    clear_session()
    again = load_model(tmp_path / "m.keras")
    assert [type(a).__name__ for a in again.layers] == [type(b).__name__ for b in model.layers]
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


def test_the_conv_family_is_keras_s(tmp_path, rng, keras):
    theirs = conv_family_model(keras)
    theirs.set_weights([0.3 * rng.standard_normal(w.shape).astype("float32") for w in theirs.get_weights()])
    x = rng.standard_normal((2, 8, 8, 3)).astype("float32")
    expected = np.asarray(theirs.predict(x, verbose=0))
    theirs.save(tmp_path / "keras.keras")
    ours = load_model(tmp_path / "keras.keras")
    assert ours.count_params() == theirs.count_params()
    assert relative_difference(ours.predict(x, verbose=0), expected) <= 1e-5
    ours.save(tmp_path / "minires.keras")
    back = keras.saving.load_model(tmp_path / "minires.keras")
    assert relative_difference(np.asarray(back.predict(x, verbose=0)), expected) <= 1e-5


def test_a_minires_layer_saving_cannot_write_is_refused_before_the_file(tmp_path, monkeypatch):
    """A minires layer missing from the supported set (a layer added without its
    Keras configuration) is refused, nothing written: neither library could rebuild it."""
    from minires import saving
    monkeypatch.delitem(saving.LAYER_CLASSES, "Conv2DTranspose")
    model = conv_family_model(mk)
    with pytest.raises(ValueError, match=r"layer 'conv2d_transpose' \(Conv2DTranspose\): minires does "
                                         "not write this layer's Keras configuration yet"):
        model.save(tmp_path / "m.keras")
    assert os.listdir(tmp_path) == []
