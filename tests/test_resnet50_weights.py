"""Loading Keras ResNet-50 weight files of both generations, by name.

Files are written with h5py in each Keras generation's exact layout and names
(random weights); the loaded model is compared with a second model whose
parameters were set straight from the same arrays (the independent path).
Loads into an existing model (load_by_name) run on ``--device``.
"""
import h5py
import numpy as np
import pytest
from conftest import on_cpu

import keras_files
import keras_resnet50_layers as golden
from minires.applications import ResNet50
from minires.applications.resnet import load_resnet50_weights, weights_generation, weights_pool1_pad
from minires.io.keras_h5 import WeightsFileError, load_by_name

SMALL = dict(input_shape=(64, 64, 3))                   # any size: the GAP head accepts it
STYLES = [  # (generation, weight-name style, bytes attributes, full-model file)
    ("legacy", "keras1", True, False),                  # the original 2016 file
    ("legacy", "keras2", True, False),
    ("current", "keras2", False, False),                # tf.keras's file
    ("current", "keras2", True, True),
    ("current", "keras3", False, True),                 # Keras 3 model.save('m.h5')
]


def file_layer_order(generation):
    return [name for name, *_ in (golden.LEGACY if generation == "legacy" else golden.CURRENT)]


def reference_model(generation, weights, **kwargs):
    """The independent path: parameters set directly from the arrays."""
    model = ResNet50(generation=generation, **kwargs)
    for name, arrays in weights.items():
        for slot, array in arrays.items():
            model.get_layer(name).params[slot][...] = array
    return model


@pytest.fixture(scope="module")
def inputs():
    return np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype("float32")


@pytest.fixture(scope="module")
def case(inputs):
    """Per generation, built once: random weights, and the outputs of the
    reference model holding them."""
    cases = {}
    for generation in ("legacy", "current"):
        weights = keras_files.random_weights(ResNet50(generation=generation, **SMALL),
                                             np.random.default_rng(len(generation)))
        outputs = reference_model(generation, weights, **SMALL).predict(inputs)
        cases[generation] = (weights, outputs)
    return cases


def assert_loaded(model, weights, expected_outputs, inputs):
    """Every parameter equals the array of its layer and name; outputs equal
    the reference model's."""
    assert {layer.name for layer in model.layers if layer.params} == set(weights)
    for layer, slot in model.parameters(trainable_only=False):
        np.testing.assert_array_equal(layer.params[slot], weights[layer.name][slot],
                                      err_msg=f"{layer.name}/{slot}")
    np.testing.assert_array_equal(model.predict(inputs), expected_outputs)


@pytest.mark.parametrize("generation, style, as_bytes, full_model", STYLES)
def test_each_generation_and_style_loads_by_name(tmp_path, inputs, case, generation, style,
                                                 as_bytes, full_model):
    weights, outputs = case[generation]
    path = tmp_path / "resnet50.h5"
    keras_files.write_legacy_layout(path, file_layer_order(generation), weights, style, as_bytes,
                                    full_model)
    model = ResNet50(weights=str(path), **SMALL)          # generation read off the file
    assert model.get_layer(index=1).name == "conv1_pad"
    assert ("bn_conv1" in {layer.name for layer in model.layers}) == (generation == "legacy")
    assert_loaded(model, weights, outputs, inputs)


def test_keras1_running_std_is_loaded_as_the_variance(tmp_path, case):
    weights, _ = case["legacy"]
    path = tmp_path / "w.h5"
    keras_files.write_legacy_layout(path, file_layer_order("legacy"), weights, "keras1")
    with h5py.File(path, "r") as f:
        stored = np.asarray(f["bn_conv1/bn_conv1_running_std:0"])
    model = ResNet50(weights=str(path), **SMALL)
    np.testing.assert_array_equal(model.get_layer("bn_conv1").params["moving_variance"], stored)


def test_keras3_weights_h5_layout(tmp_path, inputs, case):
    weights, outputs = case["current"]
    path = tmp_path / "resnet50.weights.h5"
    keras_files.write_keras3_layout(path, [(name, cls) for name, cls, _, params in golden.CURRENT
                                           if params], weights)
    assert_loaded(ResNet50(weights=str(path), **SMALL), weights, outputs, inputs)


def test_swapped_same_shaped_layers_still_load(tmp_path, inputs, case):
    """res2a_branch2c and res2a_branch1 are both (1, 1, 64, 256) kernels: listed
    in the other order (as the two generations do), loading by position would
    silently swap them; by name it cannot."""
    weights, outputs = case["legacy"]
    order = file_layer_order("legacy")
    for a, b in [("res2a_branch2c", "res2a_branch1"), ("bn2a_branch2c", "bn2a_branch1")]:
        i, j = order.index(a), order.index(b)
        order[i], order[j] = order[j], order[i]
    path = tmp_path / "swapped.h5"
    keras_files.write_legacy_layout(path, order, weights, "keras1", as_bytes=True)
    model = ResNet50(weights=str(path), **SMALL)
    assert_loaded(model, weights, outputs, inputs)
    assert not np.array_equal(model.get_layer("res2a_branch2c").params["kernel"],
                              weights["res2a_branch1"]["kernel"])


def test_notop_files_and_old_probs_name(tmp_path, case):
    weights = dict(case["current"][0])
    top = weights.pop("predictions")
    path = tmp_path / "notop.h5"
    keras_files.write_legacy_layout(path, file_layer_order("current")[:-2], weights)
    loaded = ResNet50(include_top=False, pooling="avg", weights=str(path), **SMALL)
    assert loaded.layers[-1].name == "avg_pool"
    np.testing.assert_array_equal(loaded.get_layer("conv5_block3_3_bn").params["moving_mean"],
                                  weights["conv5_block3_3_bn"]["moving_mean"])

    weights["probs"] = top                               # old keras-applications name
    order = ["probs" if n == "predictions" else n for n in file_layer_order("current")]
    path = tmp_path / "probs.h5"
    keras_files.write_legacy_layout(path, order, weights)
    loaded = ResNet50(weights=str(path), **SMALL)
    np.testing.assert_array_equal(loaded.get_layer("predictions").params["kernel"],
                                  weights["probs"]["kernel"])


def test_generation_is_recognised_and_checked(tmp_path, case):
    weights, _ = case["legacy"]
    path = tmp_path / "legacy.h5"                          # the original 2016 file's names
    keras_files.write_legacy_layout(path, no_pad_order(), weights, "keras1")
    assert weights_generation(str(path)) == "legacy"
    with pytest.raises(WeightsFileError, match=r"legacy-generation .* build ResNet50\(generation='legacy'\)"):
        ResNet50(weights=str(path), generation="current", **SMALL)
    no_pad = ResNet50(weights=str(path), pool1_pad=False)   # the v0.2 architecture, 224 only
    assert "pool1_pad" not in {layer.name for layer in no_pad.layers}


def no_pad_order():
    return [name for name, *_ in golden.LEGACY_NO_POOL1_PAD]


def test_pool1_pad_is_read_off_the_layer_names(tmp_path, case):
    """A Keras 2 file names 'pool1_pad' exactly when its network had it; a
    Keras 1 file cannot say (both networks load it, as Keras 1 and >= 2.2.3 did)."""
    weights, _ = case["legacy"]
    files = {}
    for label, order, style in [("pad", file_layer_order("legacy"), "keras2"),
                                ("no pad", no_pad_order(), "keras2"),
                                ("keras1", no_pad_order(), "keras1")]:
        files[label] = tmp_path / f"{label}.h5"
        keras_files.write_legacy_layout(files[label], order, weights, style, as_bytes=True)
    assert [weights_pool1_pad(str(files[k])) for k in ("pad", "no pad", "keras1")] == [True, False, None]
    padded = ResNet50(generation="legacy")                 # pool1_pad=True, the default
    before = [np.array(w) for w in padded.get_weights()]
    with pytest.raises(WeightsFileError, match=r"no pad.h5 was saved from the legacy ResNet-50 "
                                               r"without 'pool1_pad' .* built with it: build "
                                               r"ResNet50\(generation='legacy', pool1_pad=False\)"):
        load_resnet50_weights(padded, str(files["no pad"]), "legacy")
    assert all(np.array_equal(a, b) for a, b in zip(before, padded.get_weights()))
    with pytest.raises(WeightsFileError, match=r"with 'pool1_pad' .* pool1_pad=True"):
        ResNet50(weights=str(files["pad"]), pool1_pad=False)
    loaded = ResNet50(weights=str(files["no pad"]), pool1_pad=False)
    np.testing.assert_array_equal(loaded.get_layer("fc1000").params["kernel"], weights["fc1000"]["kernel"])
    for pad in (True, False):                              # a Keras 1 file loads into either
        ResNet50(weights=str(files["keras1"]), pool1_pad=pad)


def test_predictions_and_probs_together_are_ambiguous(tmp_path, case):
    weights = {name: dict(arrays) for name, arrays in case["current"][0].items()}
    weights["probs"] = {slot: array + 1 for slot, array in weights["predictions"].items()}
    path = tmp_path / "both.h5"
    keras_files.write_legacy_layout(path, file_layer_order("current") + ["probs"], weights)
    model = ResNet50(**SMALL)
    before = [np.array(w) for w in model.get_weights()]
    with pytest.raises(WeightsFileError, match=r"file layers 'predictions' and 'probs' both hold "
                                               r"weights for model layer 'predictions'"):
        load_resnet50_weights(model, str(path), "current")
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


# --- damaged and mismatched files ---------------------------------------------------
@pytest.fixture
def good_file(tmp_path, case):
    weights = {name: dict(arrays) for name, arrays in case["current"][0].items()}
    path = tmp_path / "good.h5"
    keras_files.write_legacy_layout(path, file_layer_order("current"), weights)
    return path, weights


def test_empty_file(tmp_path):
    path = tmp_path / "empty.h5"
    path.write_bytes(b"")
    with pytest.raises(WeightsFileError, match=r"empty.h5 is not a readable HDF5 file"):
        ResNet50(weights=str(path))


def test_non_hdf5_file(tmp_path):
    path = tmp_path / "page.h5"
    path.write_text("<html>404 Not Found</html>")      # what a failed download may leave
    with pytest.raises(WeightsFileError, match=r"page.h5 is not a readable HDF5 file"):
        ResNet50(weights=str(path))


def test_truncated_file(good_file, tmp_path):
    path, _ = good_file
    data = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsFileError, match=r"cut.h5 (is not a readable HDF5 file|is damaged)"):
        ResNet50(weights=str(cut), **SMALL)


def test_corrupt_file(good_file, tmp_path):
    """The superblock intact, the metadata after it (B-trees, heaps) overwritten.
    (Damage inside the raw weight bytes is invisible to HDF5, which keeps no
    checksums: the MD5 check of downloaded files is what catches that.)"""
    path, _ = good_file
    data = bytearray(path.read_bytes())
    data[96:len(data) // 3] = b"\xff" * (len(data) // 3 - 96)
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(WeightsFileError, match=r"corrupt.h5 (is not a readable HDF5 file|is damaged)"):
        ResNet50(weights=str(corrupt), **SMALL)


def test_missing_layer(good_file, tmp_path):
    path, weights = good_file
    del weights["conv3_block2_2_conv"]
    order = [n for n in file_layer_order("current") if n != "conv3_block2_2_conv"]
    keras_files.write_legacy_layout(tmp_path / "missing.h5", order, weights)
    with pytest.raises(WeightsFileError, match=r"model layer 'conv3_block2_2_conv' is missing from the file"):
        ResNet50(weights=str(tmp_path / "missing.h5"), **SMALL)


def test_unexpected_layer(good_file, tmp_path):
    _, weights = good_file
    weights["extra_dense"] = {"kernel": np.zeros((3, 2), "float32"), "bias": np.zeros(2, "float32")}
    keras_files.write_legacy_layout(tmp_path / "extra.h5", file_layer_order("current") + ["extra_dense"],
                                    weights)
    with pytest.raises(WeightsFileError, match=r"file layer 'extra_dense' is not in the model"):
        ResNet50(weights=str(tmp_path / "extra.h5"), **SMALL)


def test_wrong_shape_names_layer_and_shapes(good_file, tmp_path):
    _, weights = good_file
    weights["conv2_block1_2_conv"]["kernel"] = np.zeros((1, 1, 64, 64), "float32")
    keras_files.write_legacy_layout(tmp_path / "shape.h5", file_layer_order("current"), weights)
    with pytest.raises(WeightsFileError, match=r"layer 'conv2_block1_2_conv', weight 'kernel': "
                                               r"expected shape \(3, 3, 64, 64\), found \(1, 1, 64, 64\)"):
        ResNet50(weights=str(tmp_path / "shape.h5"), **SMALL)


def test_every_problem_in_one_error_and_strict_false_loads_the_rest(good_file, tmp_path, device):
    _, weights = good_file
    weights["conv1_conv"]["bias"] = np.zeros(65, "float32")
    weights["fc_extra"] = weights.pop("predictions")
    weights["conv5_block3_3_bn"]["beta"] = np.zeros(7, "float32")
    order = [("fc_extra" if n == "predictions" else n) for n in file_layer_order("current")]
    path = tmp_path / "several.h5"
    keras_files.write_legacy_layout(path, order, weights)
    model = ResNet50(**SMALL).to(device)
    with pytest.raises(WeightsFileError) as info:
        load_by_name(model, str(path))
    message = str(info.value)
    assert "(4 problems)" in message
    for expected in ["model layer 'predictions' is missing from the file",
                     "file layer 'fc_extra' is not in the model",
                     "layer 'conv1_conv', weight 'bias': expected shape (64,), found (65,)",
                     "layer 'conv5_block3_3_bn', weight 'beta': expected shape (2048,), found (7,)"]:
        assert expected in message
    skipped = load_by_name(model, str(path), strict=False)
    assert len(skipped) == 4
    np.testing.assert_array_equal(on_cpu(model.get_layer("conv2_block1_1_conv").params["kernel"]),
                                  weights["conv2_block1_1_conv"]["kernel"])
    assert not np.array_equal(on_cpu(model.get_layer("conv1_conv").params["kernel"]),   # skipped
                              weights["conv1_conv"]["kernel"])


def test_theano_ordered_files_are_rejected_with_a_hint(good_file, tmp_path):
    _, weights = good_file
    for arrays in weights.values():
        if "kernel" in arrays and arrays["kernel"].ndim == 4:
            arrays["kernel"] = arrays["kernel"].transpose(3, 2, 0, 1)[:, :, ::-1, ::-1]
    keras_files.write_legacy_layout(tmp_path / "th.h5", file_layer_order("current"), weights)
    with pytest.raises(WeightsFileError, match=r"conv1_conv.*found \(64, 3, 7, 7\).*Theano 'th' "
                                               r"dim-ordering file"):
        ResNet50(weights=str(tmp_path / "th.h5"), **SMALL)


def test_failed_load_leaves_the_model_unchanged(good_file, tmp_path, device):
    _, weights = good_file
    weights["conv5_block3_3_bn"]["gamma"] = np.zeros(7, "float32")   # the last layer is wrong
    keras_files.write_legacy_layout(tmp_path / "late.h5", file_layer_order("current"), weights)
    model = ResNet50(**SMALL).to(device)
    before = [on_cpu(w) for w in model.get_weights()]
    with pytest.raises(WeightsFileError, match="conv5_block3_3_bn"):
        load_by_name(model, str(tmp_path / "late.h5"))
    assert all(np.array_equal(a, on_cpu(b)) for a, b in zip(before, model.get_weights()))


def test_not_a_resnet50_file(tmp_path):
    keras_files.write_legacy_layout(tmp_path / "other.h5", ["dense"],
                                    {"dense": {"kernel": np.zeros((2, 2), "float32")}})
    with pytest.raises(WeightsFileError, match="holds no ResNet-50 weights of either Keras generation"):
        ResNet50(weights=str(tmp_path / "other.h5"))


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        ResNet50(weights="/nowhere.h5")


def test_weight_files_are_only_read(good_file):
    path, _ = good_file
    before = (path.stat().st_mtime_ns, path.read_bytes())
    ResNet50(weights=str(path), **SMALL)
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before
